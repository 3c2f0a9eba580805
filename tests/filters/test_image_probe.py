import dataclasses
import random

import pytest
from PIL import Image

from filters.image import ImageInfo, can_resize_from_bytes, decode_image, probe_image
from filters.findings import Finding, Problem
from tests import images


def _encode_with_orientation(fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return images.encode(images.rgb(80, 40), fmt, exif=exif.tobytes())


# factory, format, stored (w, h), displayed (w, h), mode, orientation, bits per sample, transparency
PROBE_CASES = [
    ("jpeg", images.jpeg, "JPEG", (64, 48), (64, 48), "RGB", 1, 8, False),
    ("png", images.png, "PNG", (64, 48), (64, 48), "RGB", 1, 8, False),
    ("webp", images.webp, "WEBP", (64, 48), (64, 48), "RGB", 1, None, False),
    ("cmyk_jpeg", images.cmyk_jpeg, "JPEG", (64, 48), (64, 48), "CMYK", 1, 8, False),
    ("grey_jpeg", images.grey_jpeg, "JPEG", (64, 48), (64, 48), "L", 1, 8, False),
    ("grey_png", images.grey_png, "PNG", (64, 48), (64, 48), "L", 1, 8, False),
    ("grey4_png", images.grey4_png, "PNG", (64, 48), (64, 48), "L", 1, 4, False),  # mode L hides the 4 bits
    ("rgb16_png", images.rgb16_png, "PNG", (64, 48), (64, 48), "RGB", 1, 16, False),  # mode RGB hides the 16 bits
    ("trns_png", images.trns_png, "PNG", (64, 48), (64, 48), "RGB", 1, 8, True),
    ("palette_png", images.palette_png, "PNG", (64, 48), (64, 48), "P", 1, 8, False),
    ("transparent_palette_png", images.transparent_palette_png, "PNG", (64, 48), (64, 48), "P", 1, 1, True),
    ("rgba_png", images.rgba_png, "PNG", (64, 48), (64, 48), "RGBA", 1, 8, False),
    ("la_png", images.la_png, "PNG", (64, 48), (64, 48), "LA", 1, 8, False),
    ("png16", images.png16, "PNG", (64, 48), (64, 48), "I;16", 1, 16, False),
    ("animated_gif", lambda: images.animated_gif(frames=3), "GIF", (64, 48), (64, 48), "P", 1, None, False),
    ("mpo", images.mpo, "MPO", (64, 48), (64, 48), "RGB", 1, 8, False),
    ("exif_6", images.exif_rotated_jpeg, "JPEG", (80, 40), (40, 80), "RGB", 6, 8, False),
    ("exif_3", lambda: images.exif_rotated_jpeg(orientation=3), "JPEG", (80, 40), (80, 40), "RGB", 3, 8, False),
    ("png_exif_8", lambda: _encode_with_orientation("PNG", 8), "PNG", (80, 40), (40, 80), "RGB", 8, 8, False),
    ("webp_exif_5", lambda: _encode_with_orientation("WEBP", 5), "WEBP", (80, 40), (40, 80), "RGB", 5, None, False),
    ("progressive_jpeg", images.progressive_jpeg, "JPEG", (256, 256), (256, 256), "RGB", 1, 8, False),
    # Only the pixel data is cut: the header is intact, so the probe passes.
    ("truncated_jpeg", images.truncated_jpeg, "JPEG", (256, 256), (256, 256), "RGB", 1, 8, False),
]


@pytest.mark.parametrize(
    "make, fmt, stored, displayed, mode, orientation, bits, transparency",
    [case[1:] for case in PROBE_CASES],
    ids=[case[0] for case in PROBE_CASES],
)
def test_probe_reads_header(make, fmt, stored, displayed, mode, orientation, bits, transparency):
    info = probe_image(make())
    assert info == ImageInfo(fmt, stored[0], stored[1], mode, orientation, bits, transparency)
    assert (info.width, info.height) == displayed
    assert info.pixels == stored[0] * stored[1]


# Which images a plain decoder (cv2, in img2dataset's resizer) reads as decode_image would: the
# header alone decides, so a truncated file still says True (verify_decodes catches it).
FROM_BYTES = {
    "jpeg": True,
    "png": True,
    "grey_jpeg": True,
    "grey_png": True,
    "mpo": True,  # its first image is a plain JPEG, which is what cv2 decodes
    "progressive_jpeg": True,
    "truncated_jpeg": True,
    "webp": False,  # not JPEG or PNG
    "webp_exif_5": False,
    "animated_gif": False,
    "cmyk_jpeg": False,
    "grey4_png": False,
    "rgb16_png": False,
    "trns_png": False,
    "palette_png": False,
    "transparent_palette_png": False,
    "rgba_png": False,
    "la_png": False,
    "png16": False,
    "exif_6": False,
    "exif_3": False,
    "png_exif_8": False,
}


def test_from_bytes_table_covers_every_probe_case():
    assert set(FROM_BYTES) == {case[0] for case in PROBE_CASES}


@pytest.mark.parametrize("name", sorted(FROM_BYTES))
def test_can_resize_from_bytes(name):
    make = next(case[1] for case in PROBE_CASES if case[0] == name)
    assert can_resize_from_bytes(probe_image(make())) is FROM_BYTES[name]


@pytest.mark.parametrize(
    "change, expected",
    [
        ({}, True),
        ({"format": "WEBP"}, False),
        ({"mode": "CMYK"}, False),
        ({"mode": "P"}, False),
        ({"mode": "RGBA"}, False),
        ({"mode": "I;16"}, False),
        ({"sample_bits": 16}, False),
        ({"sample_bits": None}, False),  # unknown depth: Pillow decides
        ({"transparency": True}, False),
        *(({"orientation": n}, False) for n in range(2, 9)),
    ],
)
def test_can_resize_from_bytes_needs_every_condition(change, expected):
    plain = ImageInfo("JPEG", 64, 48, "RGB", 1, 8, False)
    assert can_resize_from_bytes(dataclasses.replace(plain, **change)) is expected


@pytest.mark.parametrize("orientation", [0, 9, 255])
def test_out_of_range_orientation_counts_as_upright(orientation):
    data = images.exif_rotated_jpeg(80, 40, orientation=orientation)
    info = probe_image(data)
    assert (info.orientation, info.width, info.height) == (1, 80, 40)


def test_bomb_dimensions_read_without_decoding(pixel_work):
    info = probe_image(images.bomb_png(30000, 30000))  # 900 MB of pixels if decoded
    assert isinstance(info, ImageInfo)
    assert (info.format, info.width, info.height, info.mode) == ("PNG", 30000, 30000, "L")
    assert info.pixels == 900_000_000
    assert pixel_work == []


@pytest.mark.parametrize("make", [c[1] for c in PROBE_CASES], ids=[c[0] for c in PROBE_CASES])
def test_probe_decodes_nothing(make, pixel_work):
    data = make()  # encoding allocates; only the probe is watched
    pixel_work.clear()
    probe_image(data)
    # WebP's plugin creates its decoder at open, which is not a decode of the pixels.
    assert [event for event in pixel_work if event[0] != "webp_decoder"] == []


def test_pixel_work_spy_sees_a_decode(pixel_work):
    decode_image(images.png(64, 48), probe_image(images.png(64, 48)))
    assert ("load", (64, 48)) in pixel_work and ("buffer", (64, 48)) in pixel_work


def _random_bytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


NOT_IMAGE_CASES = [
    ("html", b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body></body></html>"),
    ("empty", b""),
    ("one_byte", b"\xff"),
    ("json", b'{"error": "forbidden"}'),
] + [(f"random_{seed}", _random_bytes(seed, 4096)) for seed in range(5)]


@pytest.mark.parametrize("data", [c[1] for c in NOT_IMAGE_CASES], ids=[c[0] for c in NOT_IMAGE_CASES])
def test_non_images_are_not_an_image(data):
    result = probe_image(data)
    assert isinstance(result, Finding)
    assert result.problem == Problem.NOT_AN_IMAGE


BROKEN_HEADER_CASES = [
    # A recognised signature whose header cannot be parsed.
    ("png_signature_only", images.png()[:8]),
    ("png_cut_in_ihdr", images.png()[:20]),
    ("jpeg_soi_only", images.jpeg()[:2]),
    ("gif_cut_in_screen_descriptor", images.animated_gif()[:9]),
]


@pytest.mark.parametrize("data", [c[1] for c in BROKEN_HEADER_CASES], ids=[c[0] for c in BROKEN_HEADER_CASES])
def test_broken_headers_are_rejected_without_raising(data):
    result = probe_image(data)
    assert isinstance(result, Finding)
    assert result.problem in (Problem.NOT_AN_IMAGE, Problem.BROKEN_IMAGE)


def test_webp_bomb_is_refused_by_the_header_parse(pixel_work):
    # Pillow's WebP plugin runs its own size guard before libwebp allocates the canvas,
    # so the probe cannot learn the dimensions; it must still say TOO_MANY_PIXELS.
    result = probe_image(images.webp_bomb(16383, 16383))
    assert isinstance(result, Finding)
    assert result.problem == Problem.TOO_MANY_PIXELS
    assert "268402689 pixels" in result.message
    assert pixel_work == []


def test_webp_header_size_is_read_below_pillows_limit():
    info = probe_image(images.webp_bomb(4000, 3000))
    assert (info.format, info.width, info.height) == ("WEBP", 4000, 3000)
