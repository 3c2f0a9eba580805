"""The pure video checks, table-driven."""

import ast
from pathlib import Path

import pytest

from filters import video
from filters.findings import Finding, Problem
from filters.video import check_duration, check_frame_size, has_video_extension


@pytest.mark.parametrize(
    "duration, low, high, expected",
    [
        (5.0, 0.0, None, None),
        (0.0, 0.0, None, None),  # no minimum keeps even a one-frame clip
        (2.0, 2.0, 10.0, None),  # bounds are inclusive
        (10.0, 2.0, 10.0, None),
        (1.999, 2.0, None, Finding(Problem.TOO_SHORT, "1.999 s is shorter than the minimum 2 s")),
        (10.5, 0.0, 10.0, Finding(Problem.TOO_LONG, "10.500 s is longer than the maximum 10 s")),
    ],
)
def test_check_duration(duration, low, high, expected):
    assert check_duration(duration, low, high) == expected


@pytest.mark.parametrize(
    "width, height, min_side, max_pixels, kind",
    [
        (64, 48, 0, 1000 * 1000, None),
        (64, 48, 48, None, None),  # equal to the minimum: kept
        (64, 47, 48, None, Problem.TOO_SMALL),
        (47, 640, 48, None, Problem.TOO_SMALL),
        (0, 0, 0, None, Problem.TOO_SMALL),  # a header without a frame size
        (1000, 1000, 0, 1000 * 1000, None),  # exactly the maximum: kept
        (1001, 1000, 0, 1000 * 1000, Problem.TOO_MANY_PIXELS),
        (8192, 8192, 0, video.DEFAULT_MAX_FRAME_PIXELS, Problem.TOO_MANY_PIXELS),
        (7680, 4320, 0, video.DEFAULT_MAX_FRAME_PIXELS, None),  # 8K UHD passes the default
        (20000, 10, 48, 1000, Problem.TOO_MANY_PIXELS),  # pixels are judged first
    ],
)
def test_check_frame_size(width, height, min_side, max_pixels, kind):
    issue = check_frame_size(width, height, min_side, max_pixels)
    assert (issue.problem if issue else None) == kind
    if issue:
        assert f"{width}x{height}" in issue.message


@pytest.mark.parametrize("name, expected", [("a.mp4", True), ("B.WEBM", True), ("c.mkv", True), ("d.jpg", False), ("mp4", False)])
def test_video_extensions(name, expected):
    assert has_video_extension(name) is expected


def test_filters_video_imports_nothing_from_pipeline():
    tree = ast.parse(Path(video.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not [m for m in imported if m and m.split(".")[0] == "pipeline"]
