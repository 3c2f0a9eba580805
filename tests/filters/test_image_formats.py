"""Untrusted header sizes, orientation applied once in every format, first frames only, and the
lossless PNG re-encoding of formats that are not stored as they are."""

import io
import struct

import numpy as np
import pytest
from PIL import GifImagePlugin, Image, ImageOps, features

from filters.findings import Finding, Problem
from filters.image import MAX_SIDE, STORED_FORMATS, ImageInfo, decode_image, probe_image, reencode_png
from tests import images


def _bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(images.encode(images.rgb(), "BMP"))
    struct.pack_into("<ii", data, 18, width, height)  # BITMAPINFOHEADER: signed 32-bit sides
    return bytes(data)


# data, what the probe must find, the claim its message must quote
IMPOSSIBLE_CASES = [
    ("png_2^31", images.png_claiming(2**31, 1), Problem.IMPOSSIBLE_SIZE, "2147483648x1"),
    ("png_2^31+1", images.png_claiming(2**31 + 1, 1), Problem.IMPOSSIBLE_SIZE, "2147483649x1"),
    ("png_2^32-1", images.png_claiming(1, 2**32 - 1), Problem.IMPOSSIBLE_SIZE, "1x4294967295"),
    ("bmp_negative_width", _bmp_claiming(-127, 64), Problem.IMPOSSIBLE_SIZE, "4294967169x64"),
    # Pillow's own plugins refuse a zero side as "not my format", as Image.open does.
    ("png_zero_width", images.png_claiming(0, 5), Problem.NOT_AN_IMAGE, None),
    ("bmp_zero_height", _bmp_claiming(64, 0), Problem.NOT_AN_IMAGE, None),
]


@pytest.mark.parametrize("data, problem, claimed", [c[1:] for c in IMPOSSIBLE_CASES], ids=[c[0] for c in IMPOSSIBLE_CASES])
def test_impossible_header_sizes_are_rejected_with_the_claim(data, problem, claimed):
    found = probe_image(data)
    assert isinstance(found, Finding) and found.problem == problem
    if claimed:
        assert f"claims {claimed} pixels" in found.message


def test_bottom_up_and_top_down_bmps_are_fine():
    assert (probe_image(_bmp_claiming(64, -48)).width, probe_image(_bmp_claiming(64, -48)).height) == (64, 48)


@pytest.mark.parametrize("width, height", [(MAX_SIDE, 1), (1, MAX_SIDE), (100_000, 100_000)])
def test_large_but_possible_sizes_are_left_to_the_area_and_aspect_checks(width, height):
    info = probe_image(images.png_claiming(width, height))
    assert isinstance(info, ImageInfo) and (info.width, info.height) == (width, height)


def _tiff(mode: str, orientation: int, size=(80, 40)) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    img = images.rgb(*size)
    img = img.convert(mode) if mode != "I;16" else Image.fromarray((np.asarray(img)[..., 0].astype(np.uint16) * 257))
    return images.encode(img, "TIFF", exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "AVIF"])
def test_orientation_is_applied_exactly_once(fmt, orientation):
    if fmt == "AVIF" and not features.check("avif"):
        pytest.skip("this Pillow has no AVIF codec")
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = images.encode(images.rgb(80, 40), fmt, exif=exif.tobytes(), **({"quality": 100} if fmt in ("JPEG", "AVIF") else {}))
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))  # Pillow's own "upright", once
    info = probe_image(data)
    assert (info.width, info.height) == expected.size == ((40, 80) if orientation >= 5 else (80, 40))
    decoded = decode_image(data, info)
    assert np.array_equal(np.asarray(decoded), np.asarray(expected.convert("RGB")))


def test_probe_never_walks_the_frames(monkeypatch):
    seeks = []
    seek = GifImagePlugin.GifImageFile._seek

    def recording_seek(self, frame, *args, **kwargs):
        seeks.append(frame)
        return seek(self, frame, *args, **kwargs)

    monkeypatch.setattr(GifImagePlugin.GifImageFile, "_seek", recording_seek)
    info = probe_image(images.animated_gif(frames=30))
    assert isinstance(info, ImageInfo)
    assert seeks == [0]


def test_truncated_animated_gif_keeps_its_whole_first_frame():
    data = images.truncated_animated_gif()
    with pytest.raises(Exception):  # Pillow cannot count its frames...
        Image.open(io.BytesIO(data)).n_frames
    info = probe_image(data)  # ...which the probe never asks for
    assert isinstance(info, ImageInfo) and info.format == "GIF"
    assert isinstance(decode_image(data, info), Image.Image)


def _bmp_palette() -> bytes:
    return images.encode(images.rgb(64, 48).convert("P"), "BMP")


# factory, stored PNG mode, exact (lossless) or compared to Pillow's RGB conversion
REENCODE_CASES = [
    ("bmp_rgb", lambda: images.encode(images.rgb(), "BMP"), "RGB", True),
    ("bmp_palette", _bmp_palette, "P", True),
    ("tiff_rgb_rotated", lambda: _tiff("RGB", 6), "RGB", True),
    ("tiff_la", lambda: _tiff("LA", 1), "LA", True),
    ("tiff_rgba_mirrored", lambda: _tiff("RGBA", 2), "RGBA", True),
    ("tiff_16bit_rotated", lambda: _tiff("I;16", 8), "I;16", True),
    ("tiff_bilevel", lambda: _tiff("1", 3), "1", True),
    ("tiff_cmyk", lambda: _tiff("CMYK", 1), "RGB", False),
    ("ppm", lambda: images.encode(images.rgb(), "PPM"), "RGB", True),
    ("tga_rgba", lambda: images.encode(images.rgb().convert("RGBA"), "TGA"), "RGBA", True),
]


@pytest.mark.parametrize("make, mode, exact", [c[1:] for c in REENCODE_CASES], ids=[c[0] for c in REENCODE_CASES])
def test_reencode_png_is_lossless_and_upright(make, mode, exact):
    data = make()
    info = probe_image(data)
    assert info.format not in STORED_FORMATS
    png = reencode_png(data, info)
    stored = Image.open(io.BytesIO(png))
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert (stored.format, stored.mode, stored.size) == ("PNG", mode, (info.width, info.height))
    assert "exif" not in stored.info  # upright pixels, no orientation left to apply twice
    if not exact:
        expected = expected.convert(mode)
    assert np.array_equal(np.asarray(stored).astype(np.int64), np.asarray(expected).astype(np.int64))


def test_reencode_png_of_a_broken_file_is_a_finding():
    data = images.encode(images.rgb(256, 256), "TIFF")
    cut = data[: len(data) // 2]
    assert reencode_png(cut, probe_image(cut)).problem == Problem.BROKEN_IMAGE
