"""jobs.label over videos: the stages a video checkpoint (CogVLM2-Video, cogvlm2-llama3-caption) gets.

    fetch (FetchVideos: the corpus fetcher, same budgets, caps and address guard; no image checks)
      -> prepare_videos (CPU tasks: PyAV demux + decode, filters, frame sampling, preprocessing,
         a preview strip)
      -> VideoLabelModel (model actors: only the model runs there)

Decoding: the stream is demuxed once without decoding to index every frame's timestamp (what the
sampler needs, as decord's frame index gives the official demos), then decoded from the start up
to the last frame the sampler picked. Each picked frame is preprocessed as it comes out of the
decoder, so at most one full-size frame is held at a time.
"""

from __future__ import annotations

import argparse
import io
import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray

from filters import video as video_filters
from filters.dedup import content_sha256
from model.video import (
    CAPTION_MAX_NEW_TOKENS,
    CAPTION_PROMPT,
    DEFAULT_TEMPLATE,
    preprocess_frame,
    sample_frames,
)
from pipeline import schema
from pipeline.labeling import LabelModel, RowLabel, TaskSpec, _reject, _with_outcome_columns
from pipeline.options import CorpusOptions
from pipeline.schema import Rejection
from pipeline.stages import FetchAndFilter, RowResult
from pipeline.video_strip import frame_strip, strip_positions, tile

log = logging.getLogger(__name__)

VIDEO_TASKS = ("caption", "vqa")
VIDEO_MAX_BYTES = 256 * 2**20  # --max-bytes default for video jobs
IMAGE_MAX_NEW_TOKENS = 128  # --max-new-tokens default for image models
# Prompts for --task caption --prompt PRESET with a video model; "detailed" is the caption tool's (spec).
VIDEO_CAPTION_PRESETS = {"detailed": CAPTION_PROMPT, "short": "Describe this video in one sentence."}
DEFAULT_CAPTION_PRESET = "detailed"
FETCH_BATCH_ROWS = 16  # videos are large: fewer bodies per fetch call than images' 256
PREPARE_BATCH_ROWS = 4  # a 24-frame video is 14 MB of float32 pixels

_REASON_OF_ISSUE = {
    video_filters.TOO_SHORT: schema.Reason.TOO_SHORT,
    video_filters.TOO_LONG: schema.Reason.TOO_LONG,
    video_filters.TOO_SMALL: schema.Reason.TOO_SMALL,
    video_filters.TOO_MANY_PIXELS: schema.Reason.TOO_MANY_PIXELS,
}


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


def _issue(issue: video_filters.VideoIssue | None) -> Rejection | None:
    return None if issue is None else Rejection(_REASON_OF_ISSUE[issue.kind], issue.message)


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
        rejection = _issue(video_filters.check_frame_size(width, height, limits.min_side, limits.max_frame_pixels))
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
            rejection = _issue(video_filters.check_duration(duration, limits.min_duration, limits.max_duration))
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


# ----------------------------------------------------------------------------- job wiring


def is_video_model(model_dir: str) -> bool:
    """Whether config.json names the video class; False for a directory that cannot be read
    (the job's checkpoint check then says what is wrong)."""
    from model.config import CheckpointError, ModelConfig

    try:
        return ModelConfig.from_json(model_dir).is_video
    except CheckpointError:
        return False


def video_template(spec: TaskSpec) -> str:
    return spec.template or DEFAULT_TEMPLATE  # spec: pick the template by the use, not by config.json


def video_queries(spec: TaskSpec, row: dict) -> list:
    if spec.task == "caption":
        preset = spec.prompt or DEFAULT_CAPTION_PRESET
        return [VIDEO_CAPTION_PRESETS.get(preset, preset)]
    return spec.queries(row)


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("video (with a CogVLM2-Video or cogvlm2-llama3-caption checkpoint)")
    g.add_argument("--min-duration", dest="min_duration", type=float, default=0.0, help="drop videos shorter than this many seconds (default: %(default)s)")
    g.add_argument("--max-duration", dest="max_duration", type=float, default=None, help="drop videos longer than this many seconds (default: no limit)")
    g.add_argument(
        "--max-frame-pixels", dest="max_frame_pixels", type=int, default=video_filters.DEFAULT_MAX_FRAME_PIXELS,
        help="drop videos whose frames have more pixels, decided from the header (default: %(default)s, 8K UHD); "
        "--min-image-size applies to the frames' shorter side",
    )


def apply_video_defaults(args: argparse.Namespace, video: bool) -> None:
    """Defaults that depend on whether the model is a video model (flags the user set win)."""
    if args.max_bytes is None:
        args.max_bytes = VIDEO_MAX_BYTES if video else CorpusOptions.max_bytes
    if args.max_new_tokens is None:
        args.max_new_tokens = CAPTION_MAX_NEW_TOKENS if video else IMAGE_MAX_NEW_TOKENS


class FetchVideos(FetchAndFilter):
    """The corpus fetch stage with video bodies: downloads (or reads) exactly as for images, with
    the same budgets, caps, guard and dedup; decoding waits for prepare_videos' CPU tasks."""

    def inspect(self, data: bytes) -> RowResult:
        return RowResult(values={schema.SHA256: content_sha256(data), schema.BYTES: len(data)}, image=data)


def fetch_videos(ds: ray.data.Dataset, options: CorpusOptions, dedup=None, cpus_per_worker: int = 1) -> ray.data.Dataset:
    from pipeline.corpus import FETCH_ACTOR_CPUS, fetch_workers

    return ds.map_batches(
        FetchVideos,
        fn_constructor_args=(options, dedup),
        batch_size=FETCH_BATCH_ROWS,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=fetch_workers(options, cpus_per_worker)),
        num_cpus=FETCH_ACTOR_CPUS,
    )


def video_dataset(ds: ray.data.Dataset, options: CorpusOptions, dedup, spec: TaskSpec, model_dir: str, previews_per_batch: int, limits: VideoLimits) -> ray.data.Dataset:
    """A video job's fetch and prepare stages: rows in, model-ready rows (or rejections) out."""
    from pipeline.corpus import LIGHT_TASK_CPUS

    ds = fetch_videos(ds, options, dedup, cpus_per_worker=2)  # as jobs.label's image path: the model needs CPUs too
    return ds.map_batches(
        prepare_videos,
        fn_kwargs={"model_dir": model_dir, "spec": spec, "previews_per_batch": previews_per_batch, "limits": limits},
        batch_size=PREPARE_BATCH_ROWS,
        batch_format="pyarrow",
        num_cpus=LIGHT_TASK_CPUS,
    )


def prepare_videos(table: pa.Table, model_dir: str, spec: TaskSpec, previews_per_batch: int, limits: VideoLimits) -> pa.Table:
    """CPU stage: each kept video decoded, filtered, sampled and preprocessed; prompts templated.

    A plain function, so Ray runs it as tasks: decoding never happens on a model actor.
    """
    from model.processor import apply_template

    template = video_template(spec)
    rows = table.to_pylist()
    got: list[DecodedVideo | None] = []
    prompts, seconds = [], []
    previews = 0
    for row in rows:
        started = time.perf_counter()
        prepared = _prepare_row(row, template, spec, limits, previews < previews_per_batch, apply_template)
        seconds.append(time.perf_counter() - started)
        if isinstance(prepared, Rejection):
            _reject(row, prepared)
            prepared = (None, None)
        video, row_prompts = prepared
        previews += video is not None and video.strip is not None
        got.append(video)
        prompts.append(row_prompts)
    table = _with_outcome_columns(table, rows).drop_columns([schema.IMAGE_BYTES])
    table = table.rename_columns([schema.INPUT_PREFIX + n if n == schema.CAPTION else n for n in table.column_names])
    for name in (schema.WIDTH, schema.HEIGHT, schema.ORIGINAL_WIDTH, schema.ORIGINAL_HEIGHT):
        side = [None if v is None else (v.width if name in (schema.WIDTH, schema.ORIGINAL_WIDTH) else v.height) for v in got]
        column = pa.array(side, pa.int32())
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, column)
        else:
            table = table.append_column(name, column)
    video_types = {f.name: f.type for f in schema.VIDEO_FIELDS}
    added = {
        schema.FRAME_TIMESTAMPS: [None if v is None else v.timestamps for v in got],
        schema.DURATION: [None if v is None else v.duration for v in got],
        schema.FPS: [None if v is None else v.fps for v in got],
        schema.VIDEO_CODEC: [None if v is None else v.codec for v in got],
    }
    for name, values in added.items():
        table = table.append_column(name, pa.array(values, video_types[name]))
    return (
        table.append_column(schema.PIXEL_VALUES, pa.array([None if v is None else v.pixels.tobytes() for v in got], pa.binary()))
        .append_column(schema.PROMPT, pa.array([None if p is None else "\n".join(p) for p in prompts], pa.string()))
        .append_column(schema.PROMPTS, pa.array(prompts, pa.list_(pa.string())))
        .append_column(schema.PHRASES, pa.array([None] * len(rows), pa.list_(pa.string())))
        .append_column(schema.THUMBNAIL, pa.array([None if v is None else v.strip for v in got], pa.binary()))
        .append_column(schema.PREPROCESS_SECONDS, pa.array(seconds, pa.float64()))
    )


def _prepare_row(row: dict, template: str, spec: TaskSpec, limits: VideoLimits, want_preview: bool, apply_template):
    """(DecodedVideo, prompts) for a kept row, a Rejection, or Nones for a row rejected earlier."""
    if row[schema.STATUS] != schema.Status.SUCCESS:
        return None, None
    queries = video_queries(spec, row)
    if not queries or any(q is None or not str(q).strip() for q in queries):
        return Rejection(schema.Reason.MISSING_PROMPT, "no question for this row (--prompt/--prompt-col)")
    try:
        video = decode_video(row[schema.IMAGE_BYTES], template, limits, preview=want_preview)
    except Exception as e:  # noqa: BLE001 - whatever a file does to the decoder is this row's rejection
        video = Rejection(schema.Reason.DECODE_ERROR, f"{type(e).__name__}: {e}")
    if isinstance(video, Rejection):
        return video
    return video, [apply_template(str(q), template) for q in queries]


class VideoLabelModel(LabelModel):
    """Actor: the video model loaded once; captions or answers for the kept videos of each batch."""

    def __init__(self, model_dir: str, tokenizer_dir: str | None, spec: TaskSpec, settings, cpu_threads: int | None = None):
        super().__init__(model_dir, tokenizer_dir, spec, settings, cpu_threads)
        self.template = video_template(spec)

    def _label(self, rows: list[dict]) -> list[RowLabel]:
        size = self.model.config.vision.image_size
        videos = [np.frombuffer(r[schema.PIXEL_VALUES], np.float32).reshape(-1, 3, size, size).copy() for r in rows]
        prompts, video_index = [], []
        for i, row in enumerate(rows):
            for prompt in row[schema.PROMPTS]:
                prompts.append(prompt)
                video_index.append(i)
        generations = self.model.generate_videos(videos, prompts, video_index, template=self.template, settings=self.settings)
        # caption and vqa ask one question per video
        return [RowLabel(text=g.text, caption=g.text.strip(), boxes=None) for g in generations]
