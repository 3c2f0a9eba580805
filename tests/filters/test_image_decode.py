import io

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from filters.image import ImageInfo, decode_image, probe_image, verify_decodes
from filters.findings import Finding, Problem
from tests import images


def decode(data: bytes) -> Image.Image:
    info = probe_image(data)
    assert isinstance(info, ImageInfo)
    result = decode_image(data, info)
    assert isinstance(result, Image.Image), result
    assert result.mode == "RGB"
    assert result.size == (info.width, info.height)
    return result


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int32)


PATTERN = pixels(images.rgb(64, 48))


def on_white(colour: np.ndarray, alpha: int) -> np.ndarray:
    return (colour * alpha + 255 * (255 - alpha)) / 255


# factory, largest mean absolute difference from the source pattern (lossy codecs)
PATTERN_CASES = [
    ("jpeg", images.jpeg, 6),
    ("png", images.png, 0),
    ("webp", images.webp, 8),
    ("cmyk_jpeg", images.cmyk_jpeg, 3),
    ("palette_png", images.palette_png, 20),
]


@pytest.mark.parametrize("make, tolerance", [c[1:] for c in PATTERN_CASES], ids=[c[0] for c in PATTERN_CASES])
def test_decodes_to_rgb_close_to_the_source(make, tolerance):
    assert np.abs(pixels(decode(make())) - PATTERN).mean() <= tolerance


def test_rgba_is_composited_on_white():
    got = pixels(decode(images.rgba_png()))
    assert np.abs(got - on_white(PATTERN, 128)).max() <= 1
    assert got.min() >= 127  # on black it would be at most 128


def test_la_is_composited_on_white():
    grey = pixels(images.rgb(64, 48).convert("L"))[..., None]
    got = pixels(decode(images.la_png()))
    assert np.abs(got - on_white(grey, 128)).max() <= 1


def test_palette_transparency_becomes_white():
    got = pixels(decode(images.transparent_palette_png(64, 48)))
    assert (got[:, :32] == (255, 255, 255)).all()
    assert (got[:, 32:] == (255, 0, 0)).all()


def test_sixteen_bit_is_scaled_not_clipped():
    # The factory stores v * 257 for 8-bit v: scaling back must give v exactly.
    got = pixels(decode(images.png16()))
    assert (got == PATTERN[..., :1]).all()
    assert got.max() > 200


def test_animated_gif_decodes_its_first_frame():
    got = pixels(decode(images.animated_gif(frames=3)))
    second_frame = pixels(images.rgb(64, 48).rotate(15))
    assert np.abs(got - PATTERN).mean() < np.abs(got - second_frame).mean() / 3


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(orientation):
    data = images.exif_rotated_jpeg(80, 40, orientation)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    got = decode(data)
    assert got.size == expected.size == ((40, 80) if orientation >= 5 else (80, 40))
    assert (pixels(got) == pixels(expected)).all()


GOOD_CASES = [
    ("jpeg", images.jpeg),
    ("png", images.png),
    ("webp", images.webp),
    ("cmyk_jpeg", images.cmyk_jpeg),
    ("palette_png", images.palette_png),
    ("transparent_palette_png", images.transparent_palette_png),
    ("rgba_png", images.rgba_png),
    ("la_png", images.la_png),
    ("png16", images.png16),
    ("animated_gif", images.animated_gif),
    ("exif_rotated_jpeg", images.exif_rotated_jpeg),
    ("progressive_jpeg", images.progressive_jpeg),
    ("odd_sized_jpeg", lambda: images.jpeg(13, 7)),
]


@pytest.mark.parametrize("make", [c[1] for c in GOOD_CASES], ids=[c[0] for c in GOOD_CASES])
def test_good_images_verify_and_decode(make):
    data = make()
    assert verify_decodes(data, probe_image(data)) is None
    decode(data)


def _cut(data: bytes, keep: float | int) -> bytes:
    return data[: int(len(data) * keep)] if isinstance(keep, float) else data[:keep]


TRUNCATED_CASES = [
    ("jpeg_half", images.jpeg(256, 256), 0.5),
    ("jpeg_90pct", images.jpeg(256, 256), 0.9),
    ("jpeg_missing_eoi", images.jpeg(256, 256), -2),
    ("progressive_jpeg_half", images.progressive_jpeg(), 0.5),
    ("progressive_jpeg_90pct", images.progressive_jpeg(), 0.9),
    ("cmyk_jpeg_90pct", images.cmyk_jpeg(256, 256), 0.9),
    ("png_90pct", images.png(256, 256), 0.9),
    ("webp_90pct", images.webp(256, 256), 0.9),
    ("gif_first_frame_cut", images.animated_gif(256, 256, frames=1), 0.5),
]


@pytest.mark.parametrize(
    "data, keep", [c[1:] for c in TRUNCATED_CASES], ids=[c[0] for c in TRUNCATED_CASES]
)
def test_truncated_files_are_decode_errors(data, keep):
    cut = _cut(data, keep)
    info = probe_image(cut)
    if isinstance(info, Finding):  # some formats notice from the header alone
        assert info.problem == Problem.BROKEN_IMAGE
        return
    assert decode_image(cut, info).problem == Problem.BROKEN_IMAGE
    assert verify_decodes(cut, info).problem == Problem.BROKEN_IMAGE


def test_truncated_jpeg_is_caught_at_draft_scale():
    # verify_decodes relies on this: a 1/8-scale greyscale draft still reads every byte.
    im = Image.open(io.BytesIO(images.truncated_jpeg(256, 256)))
    im.draft("L", (1, 1))
    assert (im.mode, im.size) == ("L", (32, 32))
    with pytest.raises(OSError, match="truncated"):
        im.load()


@pytest.mark.parametrize("make", [images.bomb_png, images.webp_bomb], ids=["png", "webp"])
def test_bomb_is_refused_without_allocating(make, pixel_work):
    data = make()
    info = ImageInfo("PNG", 30000, 30000, "L", 1)  # a caller that skipped check_area
    assert decode_image(data, info).problem == Problem.TOO_MANY_PIXELS
    assert verify_decodes(data, info).problem == Problem.TOO_MANY_PIXELS
    assert pixel_work == []


@pytest.mark.parametrize("data", [b"", b"<html></html>"], ids=["empty", "html"])
def test_decoding_non_images_does_not_raise(data):
    info = ImageInfo("JPEG", 64, 48, "RGB", 1)  # a caller that skipped the probe
    assert decode_image(data, info).problem == verify_decodes(data, info).problem == Problem.BROKEN_IMAGE


def test_truncation_check_refuses_when_pillow_is_told_to_ignore_it(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = images.truncated_jpeg()
    info = probe_image(data)
    assert verify_decodes(data, info).problem == Problem.BROKEN_IMAGE
    assert decode_image(data, info).problem == Problem.BROKEN_IMAGE
    assert "LOAD_TRUNCATED_IMAGES" in verify_decodes(images.jpeg(), info).message


@pytest.mark.parametrize(
    "make", [images.jpeg, images.progressive_jpeg, images.cmyk_jpeg], ids=["baseline", "progressive", "cmyk"]
)
def test_verify_decodes_jpeg_at_one_eighth_scale(make, pixel_work):
    data = make(1024, 768)
    info = probe_image(data)
    pixel_work.clear()
    assert verify_decodes(data, info) is None
    assert ("buffer", (128, 96)) in pixel_work
    assert all(size[0] <= 128 for kind, size in pixel_work if kind == "buffer")
