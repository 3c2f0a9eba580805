"""Decode one video file for a video model: index, filter, sample, decode, preprocess (PyAV).

The stream is demuxed once without decoding to index every frame's timestamp (what the sampler
needs, as decord's frame index gives the official demos), then decoded from the start up to the
last frame the sampler picked. Each picked frame is preprocessed as it comes out of the decoder,
so at most one full-size frame is held at a time. Whatever a file does, the result is a
DecodedVideo or a Rejection, never an exception from FFmpeg.
"""

from __future__ import annotations

import argparse
import io
import logging
from dataclasses import dataclass

import numpy as np

from filters import video as video_filters
from model.video import preprocess_frame, sample_frames
from pipeline import schema
from pipeline.schema import Rejection
from pipeline.video_strip import frame_strip, strip_positions, tile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoLimits:
    min_duration: float = 0.0
    max_duration: float | None = None
    min_side: int = 0  # --min-image-size, applied to the frames
    max_frame_pixels: int | None = video_filters.DEFAULT_MAX_FRAME_PIXELS

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "VideoLimits":
        return cls(args.min_duration, args.max_duration, args.min_image_size, args.max_frame_pixels)


@dataclass
class DecodedVideo:
    pixels: np.ndarray  # float32 [T, 3, 224, 224], the model input
    timestamps: list[float]  # of the frames used, in the model's order
    duration: float
    fps: float
    width: int
    height: int
    codec: str
    strip: bytes | None  # JPEG of a few of the frames used, for jobs.report


def _refuse_nested_open(url, flags, options):
    # A container must never make FFmpeg open another file or URL (playlists, references).
    raise PermissionError(f"nested open of {url!r} refused")


def _open(data: bytes):
    import av

    return av.open(io.BytesIO(data), mode="r", io_open=_refuse_nested_open, metadata_errors="ignore")


def _frame_index(container, stream) -> tuple[list[int], bool]:
    """Every frame's pts from the packets alone (no decoding), sorted into presentation order,
    and whether demuxing stopped early on damaged data."""
    pts, damaged = [], False
    try:
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None:
                pts.append(packet.pts)
    except Exception as e:  # noqa: BLE001 - any demuxer failure is damage to this file
        log.debug("demux stopped: %r", e)
        damaged = True
    return sorted(pts), damaged


def average_fps(stream, timestamps: list[float]) -> float:
    rate = stream.average_rate or stream.guessed_rate
    if rate:
        return float(rate)
    span = timestamps[-1] - timestamps[0]
    return (len(timestamps) - 1) / span if span > 0 else 0.0


def decode_video(data: bytes, template: str, limits: VideoLimits = VideoLimits(), preview: bool = False) -> DecodedVideo | Rejection:
    """Bytes of one video file -> the frames the model sees, preprocessed, or why not. Never raises
    for bad input: whatever FFmpeg cannot read becomes a Rejection."""
    import av

    R = schema.Reason
    try:
        container = _open(data)
    except av.error.FFmpegError as e:
        return Rejection(R.NOT_A_VIDEO, f"not a video container FFmpeg can read: {e}")
    except Exception as e:  # noqa: BLE001 - a crash inside FFmpeg's probing: this file's problem
        return Rejection(R.NOT_A_VIDEO, f"{type(e).__name__}: {e}")
    with container:
        if container.format.name.endswith("_pipe") or container.format.name == "image2":
            # FFmpeg reads a still image as a one-frame "video"; a clip is what this job captions
            return Rejection(R.NOT_A_VIDEO, f"a still image ({container.format.name}), not a video")
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            return Rejection(R.NO_VIDEO_STREAM, f"{container.format.name} with {', '.join(kinds)}, no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        codec = stream.codec_context.name
        rejection = Rejection.of(video_filters.check_frame_size(width, height, limits.min_side, limits.max_frame_pixels))
        if rejection:
            return rejection
        pts, damaged = _frame_index(container, stream)
        if not pts:
            return Rejection(R.EMPTY_VIDEO if not damaged else R.DECODE_ERROR, f"the {codec} stream holds no frame")
        indexed = len(pts)
        for attempt in range(2):
            # Timestamps count from the first frame (a stream that starts at a nonzero pts starts at 0 here).
            timestamps = [float((p - pts[0]) * stream.time_base) for p in pts]
            fps = average_fps(stream, timestamps)
            duration = timestamps[-1] + (1.0 / fps if fps > 0 else 0.0)
            rejection = Rejection.of(video_filters.check_duration(duration, limits.min_duration, limits.max_duration))
            if rejection:
                return rejection
            picks = sample_frames(template, timestamps, fps)
            wanted = {pts[i] for i in picks}
            strip_pts = {pts[picks[j]] for j in strip_positions(len(picks))} if preview else set()
            decoded, thumbs, came_out, error = _decode_wanted(data, wanted, strip_pts, pts)
            missing = wanted - decoded.keys()
            if not missing:
                break
            if attempt == 0:
                # It decodes only partly (or its frames' pts are not its packets'): sample again over
                # the frames that do come out of the decoder, as if the file ended after the last of
                # them, and keep the video if the sampler's picks from those all decode.
                pts = _decodable_pts(data, pts)
                if pts:
                    continue
            got = len(wanted) - len(missing)
            why = f"; decoder: {error}" if error else ""
            return Rejection(
                R.VIDEO_TRUNCATED if came_out else R.DECODE_ERROR,
                f"decoded {got} of the {len(wanted)} frames the sampler picks from {indexed} indexed{why}",
            )
    return DecodedVideo(
        pixels=np.stack([decoded[pts[i]] for i in picks]),
        timestamps=[timestamps[i] for i in picks],
        duration=duration,
        fps=fps,
        width=width,
        height=height,
        codec=codec,
        # one tile per strip position, repeats included, so tile i is frame_timestamps[strip_positions(T)[i]]
        strip=frame_strip([thumbs[pts[picks[j]]] for j in strip_positions(len(picks))]) if thumbs else None,
    )


def _decodable_pts(data: bytes, index: list[int]) -> list[int]:
    """The pts of every frame that comes out of a full decode, in order (no pixels converted)."""
    import av

    seen = []
    try:
        with _open(data) as again:
            for frame in again.decode(again.streams.video[0]):
                seen.append(frame.pts if frame.pts is not None else index[min(len(seen), len(index) - 1)])
    except (av.error.FFmpegError, ValueError, MemoryError):
        pass
    return sorted(set(seen))


def _decode_wanted(data: bytes, wanted: set[int], strip_pts: set[int], index: list[int]):
    """Decode from the start until every wanted pts came out (or the data ends or breaks).
    -> (pts -> preprocessed frame, pts -> small RGB thumbnail, every pts that came out, the
    decoder's error or None)."""
    import av

    out, thumbs, came_out, error = {}, {}, [], None
    last = max(wanted)
    try:
        with _open(data) as again:  # a fresh demuxer: the first one was read to the end for the index
            # FFmpeg's default slice threading: frame threading was 5x slower on a busy 2-core machine,
            # and prepare tasks run side by side anyway
            vstream = again.streams.video[0]
            for frame in again.decode(vstream):
                # a frame without pts takes the index's pts of its position (no reordering then)
                pts = frame.pts if frame.pts is not None else index[min(len(came_out), len(index) - 1)]
                came_out.append(pts)
                if pts in wanted and pts not in out:
                    rgb = frame.to_ndarray(format="rgb24")
                    out[pts] = preprocess_frame(rgb)
                    if pts in strip_pts:
                        thumbs[pts] = tile(rgb)
                if len(out) == len(wanted) or pts > last:
                    break
    except (av.error.FFmpegError, ValueError, MemoryError) as e:
        error = f"{type(e).__name__}: {e}"
    return out, thumbs, came_out, error
