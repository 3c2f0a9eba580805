"""Video filters: pure checks on what a video's header and frame index say.

Each check takes plain values and returns a `Finding` (why the video is dropped) or None, as the
image filters do; pipeline/schema.py maps each problem to the row's reason code, so nothing here
imports the pipeline. Decoding lives in pipeline/video_decode.py.
"""

from __future__ import annotations

from filters.findings import Finding, Problem

# What a folder of videos or a webdataset video member is recognised by (video2dataset writes mp4).
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".3gp", ".ogv")

DEFAULT_MAX_FRAME_PIXELS = 7680 * 4320  # 8K UHD


def check_duration(duration: float, min_seconds: float = 0.0, max_seconds: float | None = None) -> Finding | None:
    """Both bounds inclusive: a clip of exactly min or max seconds is kept."""
    if duration < min_seconds:
        return Finding(Problem.TOO_SHORT, f"{duration:.3f} s is shorter than the minimum {min_seconds:g} s")
    if max_seconds is not None and duration > max_seconds:
        return Finding(Problem.TOO_LONG, f"{duration:.3f} s is longer than the maximum {max_seconds:g} s")
    return None


def check_frame_size(width: int, height: int, min_side: int = 0, max_pixels: int | None = DEFAULT_MAX_FRAME_PIXELS) -> Finding | None:
    """From the stream header, before a frame is decoded: a 16k x 16k clip never allocates a frame."""
    if width <= 0 or height <= 0:
        return Finding(Problem.TOO_SMALL, f"the stream declares no frame size ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        return Finding(Problem.TOO_MANY_PIXELS, f"{width}x{height} frames have {width * height} pixels, over {max_pixels}")
    if min(width, height) < min_side:
        return Finding(Problem.TOO_SMALL, f"{width}x{height}: shorter side below {min_side}")
    return None


def has_video_extension(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS)
