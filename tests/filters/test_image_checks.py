import pytest

from filters.image import ImageInfo, check_area, check_aspect_ratio, check_size
from filters.findings import Problem


def info(width: int, height: int, orientation: int = 1) -> ImageInfo:
    """Stored width x height; orientations 5-8 display it as height x width."""
    return ImageInfo("JPEG", width, height, "RGB", orientation)


@pytest.mark.parametrize(
    "width, height, orientation, min_size, message",
    [
        (32, 32, 1, 32, None),  # equal to the minimum: kept
        (32, 1000, 1, 32, None),
        (31, 1000, 1, 32, "shorter side 31 px below 32 (31x1000)"),
        (1000, 31, 1, 32, "shorter side 31 px below 32 (1000x31)"),
        (8, 64, 6, 32, "shorter side 8 px below 32 (64x8)"),  # displayed size is reported
        (1, 1, 1, 0, None),  # 0 keeps everything
        (1, 1, 1, 1, None),
    ],
)
def test_check_size(width, height, orientation, min_size, message):
    result = check_size(info(width, height, orientation), min_size)
    if message is None:
        assert result is None
    else:
        assert (result.problem, result.message) == (Problem.TOO_SMALL, message)


@pytest.mark.parametrize(
    "width, height, orientation, max_ratio, message",
    [
        (600, 100, 1, 6.0, None),  # exactly 6:1 kept
        (100, 600, 1, 6.0, None),  # exactly 1:6 kept
        (601, 100, 1, 6.0, "aspect ratio 6.01 (601x100) beyond 6"),
        (100, 601, 1, 6.0, "aspect ratio 0.17 (100x601) below 1/6"),
        (700, 100, 1, 6.0, "aspect ratio 7.00 (700x100) beyond 6"),
        (700, 100, 6, 6.0, "aspect ratio 0.14 (100x700) below 1/6"),  # judged as displayed
        (6 * 99991, 99991, 1, 6.0, None),
        (6 * 99991 + 1, 99991, 1, 6.0, "aspect ratio 6.00 (599947x99991) beyond 6"),
        (1, 1, 1, 6.0, None),
        (3, 1, 1, 2.5, "aspect ratio 3.00 (3x1) beyond 2.5"),
        (5, 2, 1, 2.5, None),
        (2, 5, 1, 2.5, None),
        (1, 1, 1, 1.0, None),
        (2, 1, 1, 1.0, "aspect ratio 2.00 (2x1) beyond 1"),
    ],
)
def test_check_aspect_ratio(width, height, orientation, max_ratio, message):
    result = check_aspect_ratio(info(width, height, orientation), max_ratio)
    if message is None:
        assert result is None
    else:
        assert (result.problem, result.message) == (Problem.ASPECT_RATIO, message)


def test_check_aspect_ratio_defaults_to_six():
    assert check_aspect_ratio(info(600, 100)) is None
    assert check_aspect_ratio(info(601, 100)).problem == Problem.ASPECT_RATIO


@pytest.mark.parametrize(
    "width, height, max_area, message",
    [
        (1000, 500, 500_000, None),  # equal to the maximum: kept
        (1000, 501, 500_000, "501000 pixels (1000x501) above 500000 (decided from the header, not decoded)"),
        (
            9000,
            10000,
            50_000_000,
            "90000000 pixels (9000x10000) above 50000000 (decided from the header, not decoded)",
        ),
        (30000, 30000, 2**62, None),
        (1, 1, 1, None),
    ],
)
def test_check_area(width, height, max_area, message):
    result = check_area(info(width, height), max_area)
    if message is None:
        assert result is None
    else:
        assert (result.problem, result.message) == (Problem.TOO_MANY_PIXELS, message)
