"""Decoding, sampling and filtering videos with PyAV, on clips encoded here; and the preview strip."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from model.processor import CLIP_MEAN, CLIP_STD
from model.video import sample_base
from pipeline import schema
from pipeline.schema import Rejection
from pipeline.video_decode import DecodedVideo, VideoLimits, decode_video
from pipeline.video_strip import STRIP_FRAMES, TILE_HEIGHT, report_image, strip_card, strip_positions, wrap
from tests import videos

R = schema.Reason


def red_index(pixels: np.ndarray) -> list[int]:
    """Which clip frame each preprocessed frame is: the red channel (8 x index) un-normalised."""
    red = pixels[:, 0] * CLIP_STD[0] + CLIP_MEAN[0]
    return [round(float(r.mean()) * 255 / 8) for r in red]


@pytest.fixture(scope="module")
def clips() -> dict[str, bytes]:
    return {
        "mp4": videos.encode(seconds=3.0, fps=10),
        "webm": videos.encode(seconds=2.0, fps=10, container="webm", codec="libvpx-vp9"),
        "with_audio": videos.encode(seconds=2.0, audio=True),
        "long": videos.encode(seconds=30.0, fps=2),
        "audio_only": videos.audio_only(),
        "zero_frames": videos.zero_frames(),
        "huge": videos.huge(),
    }


def decoded(data: bytes, template: str = "chat", **limits) -> DecodedVideo:
    out = decode_video(data, template, VideoLimits(**limits), preview=True)
    assert isinstance(out, DecodedVideo), out
    return out


def rejected(data: bytes, template: str = "chat", **limits) -> Rejection:
    out = decode_video(data, template, VideoLimits(**limits))
    assert isinstance(out, Rejection), out
    return out


def test_good_mp4_chat_sampling_picks_one_frame_per_second(clips):
    v = decoded(clips["mp4"])  # 30 frames at 10 fps: starts 0.0 .. 2.9 s, round(2.9) = 3
    assert v.timestamps == pytest.approx([0.0, 1.0, 2.0, 2.9])
    assert red_index(v.pixels) == [0, 10, 20, 29]
    assert v.pixels.shape == (4, 3, 224, 224) and v.pixels.dtype == np.float32
    assert (v.duration, v.fps, v.width, v.height, v.codec) == (pytest.approx(3.0), 10.0, 64, 48, "h264")


def test_base_sampling_takes_24_frames_with_repeats(clips):
    v = decoded(clips["mp4"], "base")
    assert len(v.timestamps) == 24
    assert red_index(v.pixels) == sample_base(30, 10.0)


def test_long_clip_chat_stops_at_24_frames(clips):
    v = decoded(clips["long"])  # 30 s at 2 fps
    assert v.timestamps == pytest.approx([float(s) for s in range(24)])
    assert v.duration == pytest.approx(30.0)


@pytest.mark.parametrize("name", ["webm", "with_audio"])
def test_other_containers_and_audio_tracks(clips, name):
    v = decoded(clips[name])
    assert v.timestamps == pytest.approx([0.0, 1.0, 1.9]) and red_index(v.pixels) == [0, 10, 19]


@pytest.mark.parametrize(
    "name, reason",
    [("audio_only", R.NO_VIDEO_STREAM), ("zero_frames", R.NO_VIDEO_STREAM), ("huge", R.TOO_MANY_PIXELS)],
)
def test_hostile_clips_are_rejected_with_a_reason(clips, name, reason):
    assert rejected(clips[name]).reason == reason


@pytest.mark.parametrize("data", [b"", b"\x00" * 1000, b"<!doctype html><html></html>", b"\x1a\x45\xdf\xa3garbage"])
def test_not_a_video(data):
    assert rejected(data).reason == R.NOT_A_VIDEO


def test_still_images_are_not_videos():
    from tests import images

    for data in (images.jpeg(), images.png(), images.webp()):
        r = rejected(data)
        assert r.reason == R.NOT_A_VIDEO and "still image" in r.message


def test_huge_resolution_is_judged_from_the_header(clips, monkeypatch):
    import av

    def no_decoding(*args, **kwargs):
        raise AssertionError("a frame was decoded")

    monkeypatch.setattr(av.VideoFrame, "to_ndarray", no_decoding)
    r = rejected(clips["huge"])
    assert "8192x8192" in r.message
    assert rejected(clips["mp4"], max_frame_pixels=64 * 48 - 1).reason == R.TOO_MANY_PIXELS


def test_duration_and_size_limits(clips):
    assert rejected(clips["mp4"], min_duration=3.5).reason == R.TOO_SHORT
    assert rejected(clips["mp4"], max_duration=2.5).reason == R.TOO_LONG
    assert decoded(clips["mp4"], min_duration=3.0, max_duration=3.0).duration == pytest.approx(3.0)
    assert rejected(clips["mp4"], min_side=49).reason == R.TOO_SMALL
    assert decoded(clips["mp4"], min_side=48).width == 64


@pytest.mark.parametrize("container", ["mp4", "matroska", "webm"])
@pytest.mark.parametrize("keep", [0.3, 0.5, 0.8])
def test_truncated_clip_keeps_what_decodes_or_is_rejected(container, keep):
    codec = "libvpx-vp9" if container == "webm" else "libx264"
    full = videos.encode(seconds=4.0, fps=10, container=container, codec=codec)
    for template in ("chat", "base"):
        out = decode_video(videos.truncated(full, keep), template, VideoLimits())
        if isinstance(out, Rejection):
            assert out.reason in (R.VIDEO_TRUNCATED, R.EMPTY_VIDEO, R.NOT_A_VIDEO, R.DECODE_ERROR), out
            continue
        # whatever is kept is real frames from the start of the clip, at their own times
        indices = red_index(out.pixels)
        assert indices == [round(t * 10) for t in out.timestamps]
        assert max(out.timestamps) < 4.0 * keep + 0.5 and out.duration <= 4.0


def test_truncated_faststart_mp4_is_sampled_over_the_frames_that_decode():
    full = videos.encode(seconds=4.0, fps=10)
    v = decoded(videos.truncated(full, 0.5))
    assert 0 < len(v.timestamps) < 4 and red_index(v.pixels) == [round(t * 10) for t in v.timestamps]


def test_bytes_damaged_in_the_middle_never_raise():
    data = bytearray(videos.encode(seconds=3.0, fps=10, container="matroska"))
    rng = np.random.default_rng(0)
    for start in rng.integers(len(data) // 4, len(data) - 64, size=6):
        damaged = bytes(data[:start]) + rng.integers(0, 256, 64, dtype=np.uint8).tobytes() + bytes(data[start + 64 :])
        for template in ("chat", "base"):
            out = decode_video(damaged, template, VideoLimits())
            assert isinstance(out, (Rejection, DecodedVideo))


# ----------------------------------------------------------------------------- the preview strip


def test_strip_has_one_tile_per_position_in_the_frames_order(clips):
    v = decoded(clips["long"])  # 24 sampled frames
    strip = Image.open(io.BytesIO(v.strip))
    positions = strip_positions(24)
    assert len(positions) == STRIP_FRAMES and positions[0] == 0 and positions[-1] == 23
    assert strip.height == TILE_HEIGHT and strip.width == STRIP_FRAMES * 128  # 64x48 tiles at 96 px high
    reds = [np.asarray(strip)[:, i * 128 : (i + 1) * 128, 0].mean() for i in range(STRIP_FRAMES)]
    # second s is clip frame 2s at 2 fps, whose red is 8 * 2s mod 256
    assert [round(r / 8) % 32 for r in reds] == [(2 * p) % 32 for p in positions]


def test_strip_card_shows_the_strip_times_and_caption(clips):
    v = decoded(clips["mp4"])
    card = strip_card(v.strip, v.timestamps, "A red square slowly fades in on a striped background. " * 5)
    strip = Image.open(io.BytesIO(v.strip))
    assert card.width == strip.width and card.height > strip.height + 30
    assert np.asarray(card)[strip.height + 20 :].min() < 100  # ink below the strip
    assert strip_card(v.strip, v.timestamps, None).height < card.height


def test_wrap_keeps_lines_within_width_and_marks_cut_text():
    measure = len
    lines = wrap("one two three four five six seven eight nine ten", 9, measure, max_lines=3)
    assert len(lines) == 3 and all(len(line) <= 9 for line in lines) and lines[-1].endswith("...")
    assert wrap("abcdefghijklmnopqrstuvwxyz", 10, measure) == ["abcdefghij", "klmnopqrst", "uvwxyz"]


def test_report_image_only_for_video_rows(clips):
    v = decoded(clips["mp4"])
    png = report_image(v.strip, {schema.FRAME_TIMESTAMPS: v.timestamps, schema.LABEL_CAPTION: "a clip"})
    assert Image.open(io.BytesIO(png)).format == "PNG"
    assert report_image(v.strip, {schema.LABEL_CAPTION: "an image row"}) is None
    assert report_image(b"not a jpeg", {schema.FRAME_TIMESTAMPS: [0.0]}) is None
