"""Real odd images from Pillow's test suite (tests/data/odd_images/SOURCES.md) through the inspect stage.

What Pillow loads in full within the limits is kept, stored only as JPEG, PNG, WebP or GIF and
upright exactly once; everything else is one row's rejection with a stable reason, never an
exception.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from filters.image import decode_image, probe_image
from pipeline.options import CorpusOptions
from pipeline.schema import Reason
from pipeline.stages import inspect_image, result_columns
from pipeline.writer import IMAGE_EXTENSIONS
from tests import images

ODD = Path(__file__).resolve().parents[1] / "data" / "odd_images"
# Several of these are long and thin (590x88, 200x32): the aspect filter is not what is tested.
OPTIONS = CorpusOptions(max_aspect_ratio=10)

# file -> (reason, words the message must contain)
REJECTED = {
    "badwidth.bmp": (Reason.DECODE_ERROR, "BMP header claims 4294967169x64 pixels"),
    "l2rgb_read.bmp": (Reason.TOO_MANY_PIXELS, "3158064x48"),
    "reallybig.bmp": (Reason.TOO_MANY_PIXELS, "3000000x2000000"),
    "decompression_bomb.gif": (Reason.TOO_MANY_PIXELS, "4364696535 pixels"),
    "decompression_bomb.ico": (Reason.TOO_MANY_PIXELS, "4294836225 pixels"),
    "truncated_jpeg.jpg": (Reason.DECODE_ERROR, "truncated"),
    "truncated_end_chunk.png": (Reason.DECODE_ERROR, "Truncated File Read"),
    "broken.png": (Reason.NOT_AN_IMAGE, "80 bytes"),
    "zero_width.gif": (Reason.NOT_AN_IMAGE, "44 bytes"),
    "seek_too_large.tif": (Reason.DECODE_ERROR, "Unable to seek to frame"),
    "chunk_no_fctl.png": (Reason.DECODE_ERROR, "APNG contains frame sequence errors"),
    "png_decompression_dos.png": (Reason.DECODE_ERROR, "MAX_TEXT_CHUNK"),
    "psd-large-bytecounts.psd": (Reason.DECODE_ERROR, "Truncated File Read"),
}
# file -> (stored format, displayed (w, h), stored mode). Formats other than JPEG, PNG, WebP
# and GIF are stored as PNG.
KEPT = {
    "orientation_rectangle.jpg": ("JPEG", (1, 2), "RGB"),
    "hopper_orientation_6.webp": ("WEBP", (128, 128), "RGB"),
    "pil_sample_cmyk.jpg": ("JPEG", (100, 100), "CMYK"),
    "dispose_bgnd.gif": ("GIF", (100, 100), "P"),  # animated
    "dispose_bgnd_cut700.gif": ("GIF", (100, 100), "P"),  # animated, cut in a later frame
    "delay.png": ("PNG", (128, 64), "RGBA"),  # APNG
    "1_trns.png": ("PNG", (64, 64), "1"),
    **{f"g4_orientation_{n}.tif": ("PNG", (590, 88), "1") for n in range(1, 9)},  # bilevel G4 TIFF, EXIF-rotated
    "tiff_strip_cmyk_jpeg.tif": ("PNG", (100, 100), "RGB"),  # PNG has no CMYK
    "16bit.cropped.tif": ("PNG", (64, 64), "I;16"),
    "16bit.MM.deflate.tif": ("PNG", (64, 64), "I;16"),  # big-endian 16-bit
    "16_bit_binary.pgm": ("PNG", (20, 100), "I;16"),  # 32-bit mode I holding 16-bit values
    "10ct_32bit_128.tiff": ("PNG", (128, 128), "RGB"),  # float: scaled to 8 bits
    "hopper.ico": ("PNG", (16, 16), "RGBA"),
    "rgba.psd": ("PNG", (100, 100), "RGBA"),
    "five_channels.psd": ("PNG", (1, 1), "RGB"),
    "hopper.avif": ("PNG", (128, 128), "RGB"),
    "odd_stride.pcx": ("PNG", (371, 150), "P"),
    "hopper.xbm": ("PNG", (128, 128), "1"),
    "200x32_la_tl_rle.tga": ("PNG", (200, 32), "LA"),
}
# Where PNG cannot hold the mode, the stored pixels are Pillow's conversion to the stored mode.
CONVERTED = {"tiff_strip_cmyk_jpeg.tif", "10ct_32bit_128.tiff", "five_channels.psd"}


def read(name: str) -> bytes:
    return (ODD / name).read_bytes()


def test_the_corpus_is_what_sources_md_lists():
    listed = {line.split("`")[1] for line in (ODD / "SOURCES.md").read_text().splitlines() if line.startswith("| `")}
    on_disk = {p.name for p in ODD.iterdir() if p.name != "SOURCES.md"}
    assert listed == on_disk == set(REJECTED) | set(KEPT)


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejected_with_a_stable_reason(name):
    reason, words = REJECTED[name]
    result = inspect_image(read(name), OPTIONS)
    assert result.rejection is not None and result.image is None
    assert result.rejection.reason == reason
    assert words in result.rejection.message


def pillow_reference(data: bytes) -> Image.Image:
    """What Pillow itself shows: the first frame, loaded, with the orientation applied once."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return ImageOps.exif_transpose(im)


@pytest.mark.parametrize("name", sorted(KEPT))
def test_kept_images_are_stored_as_a_loader_expects(name):
    fmt, size, mode = KEPT[name]
    data = read(name)
    result = inspect_image(data, OPTIONS)
    assert result.rejection is None, result.rejection
    assert result.values["image_format"] == fmt and fmt in IMAGE_EXTENSIONS
    assert (result.values["width"], result.values["height"]) == size
    assert (result.values["original_width"], result.values["original_height"]) == size
    with Image.open(io.BytesIO(result.image)) as stored:
        assert (stored.format, stored.mode) == (fmt, mode)
        stored.load()
        if fmt != "PNG" or data.startswith(b"\x89PNG"):
            assert result.image == data  # kept as downloaded, byte for byte
            return
        assert stored.size == size
        reference = pillow_reference(data)
        if name in CONVERTED:
            reference = reference.convert(mode)
        # Lossless: the same numbers as Pillow's own decode (16-bit and palette included).
        assert np.array_equal(np.asarray(stored).astype(np.int64), np.asarray(reference).astype(np.int64))
        if mode == "P":
            assert stored.getpalette() == reference.getpalette()


@pytest.mark.parametrize("name", sorted(n for n, (fmt, _, _) in KEPT.items() if fmt == "PNG" and not n.endswith(".png")))
def test_other_formats_reject(name):
    result = inspect_image(read(name), dataclasses.replace(OPTIONS, other_formats="reject"))
    assert result.rejection.reason == Reason.UNSUPPORTED_FORMAT
    assert probe_image(read(name)).format in result.rejection.message


def test_other_formats_reject_keeps_the_four_stored_formats():
    options = dataclasses.replace(OPTIONS, other_formats="reject")
    for name, (fmt, _, _) in KEPT.items():
        if fmt != "PNG" or name.endswith(".png"):
            assert inspect_image(read(name), options).rejection is None, name


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation_is_applied_once(orientation):
    # Pillow's own test: every g4_orientation_N.tif shows the same picture as orientation 1.
    upright = np.asarray(Image.open(ODD / "g4_orientation_1.tif").convert("L")).astype(np.int32)
    data = read(f"g4_orientation_{orientation}.tif")
    info = probe_image(data)
    assert (info.width, info.height) == (590, 88)
    decoded = np.asarray(decode_image(data, info).convert("L")).astype(np.int32)
    assert decoded.shape == upright.shape
    assert np.abs(decoded - upright).mean() <= 0.7
    stored = inspect_image(data, OPTIONS).image
    assert np.abs(np.asarray(Image.open(io.BytesIO(stored)).convert("L")).astype(np.int32) - upright).mean() <= 0.7


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation_with_resize(orientation):
    resized = CorpusOptions(max_aspect_ratio=10, resize="keep_ratio", image_size=44)
    from pipeline.stages import _resizer

    result = inspect_image(read(f"g4_orientation_{orientation}.tif"), resized, _resizer(resized))
    assert result.rejection is None
    assert result.values["image_format"] == "JPEG"
    assert (result.values["width"], result.values["height"]) == (295, 44)  # landscape, as displayed


def test_huge_header_sizes_never_overflow_a_column():
    # The rows the issue saw kill a whole job: a BMP claiming 4294967169 px wide, a PNG claiming 2^31+1.
    import pyarrow as pa

    rows = [read("badwidth.bmp"), images.png_claiming(2**31 + 1, 1), images.png_claiming(1, 2**32 - 1), images.png()]
    results = [inspect_image(data, CorpusOptions(max_image_area=2**62, max_aspect_ratio=1e12)) for data in rows]
    assert len(rows[1]) == 57
    assert [r.rejection.reason if r.rejection else None for r in results] == [Reason.DECODE_ERROR] * 3 + [None]
    assert "2147483649x1" in results[1].rejection.message and "1x4294967295" in results[2].rejection.message
    table = result_columns(pa.table({"key": ["a", "b", "c", "d"], "url": ["u"] * 4, "caption": ["c"] * 4}), results)
    assert table.column("status").to_pylist() == ["failed_to_decode"] * 3 + ["success"]
