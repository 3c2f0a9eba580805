"""Video filters: pure checks on what a video's header and frame index say.

Each check takes plain values and returns a `VideoIssue` (why the video is dropped) or None. The
kinds are this module's own words; pipeline/video.py maps each to the row's reason code in
pipeline/schema.py, so nothing here imports the pipeline. Decoding lives in pipeline/video.py.
"""

from __future__ import annotations

from dataclasses import dataclass

# What a folder of videos or a webdataset video member is recognised by (video2dataset writes mp4).
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".3gp", ".ogv")

TOO_SHORT, TOO_LONG, TOO_SMALL, TOO_MANY_PIXELS = "too_short", "too_long", "too_small", "too_many_pixels"
DEFAULT_MAX_FRAME_PIXELS = 7680 * 4320  # 8K UHD


@dataclass(frozen=True)
class VideoIssue:
    kind: str  # one of TOO_SHORT, TOO_LONG, TOO_SMALL, TOO_MANY_PIXELS
    message: str


def check_duration(duration: float, min_seconds: float = 0.0, max_seconds: float | None = None) -> VideoIssue | None:
    """Both bounds inclusive: a clip of exactly min or max seconds is kept."""
    if duration < min_seconds:
        return VideoIssue(TOO_SHORT, f"{duration:.3f} s is shorter than the minimum {min_seconds:g} s")
    if max_seconds is not None and duration > max_seconds:
        return VideoIssue(TOO_LONG, f"{duration:.3f} s is longer than the maximum {max_seconds:g} s")
    return None


def check_frame_size(width: int, height: int, min_side: int = 0, max_pixels: int | None = DEFAULT_MAX_FRAME_PIXELS) -> VideoIssue | None:
    """From the stream header, before a frame is decoded: a 16k x 16k clip never allocates a frame."""
    if width <= 0 or height <= 0:
        return VideoIssue(TOO_SMALL, f"the stream declares no frame size ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        return VideoIssue(TOO_MANY_PIXELS, f"{width}x{height} frames have {width * height} pixels, over {max_pixels}")
    if min(width, height) < min_side:
        return VideoIssue(TOO_SMALL, f"{width}x{height}: shorter side below {min_side}")
    return None


def has_video_extension(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS)
