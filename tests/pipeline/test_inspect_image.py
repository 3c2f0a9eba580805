"""The inspect stage's decode check (--decode-check) and its two resize paths (--resize)."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from filters.image import ImageInfo, probe_image
from pipeline import stages
from pipeline.options import CorpusOptions
from pipeline.schema import Reason, Rejection
from pipeline.stages import _resizer, inspect_image, resize
from tests import images

OPTIONS = CorpusOptions(min_image_size=16)

# name, bytes, options changed from OPTIONS, reason with --decode-check full, reason with none
DECODE_CHECK_CASES = [
    ("truncated_jpeg", images.truncated_jpeg(), {}, Reason.DECODE_ERROR, None),
    ("truncated_png", images.png(256, 256)[:-200], {}, Reason.DECODE_ERROR, None),
    ("jpeg", images.jpeg(), {}, None, None),
    ("png", images.png(), {}, None, None),
    ("webp", images.webp(), {}, None, None),
    ("animated_gif", images.animated_gif(), {}, None, None),
    ("cmyk_jpeg", images.cmyk_jpeg(), {}, None, None),
    # Header-only checks reject without decoding, whatever the decode check.
    ("too_small", images.png(8, 8), {}, Reason.TOO_SMALL, Reason.TOO_SMALL),
    ("truncated_too_small", images.jpeg(12, 12)[:630], {}, Reason.TOO_SMALL, Reason.TOO_SMALL),
    ("aspect_ratio", images.png(140, 20), {}, Reason.ASPECT_RATIO, Reason.ASPECT_RATIO),
    ("bomb", images.bomb_png(), {}, Reason.TOO_MANY_PIXELS, Reason.TOO_MANY_PIXELS),
    ("area", images.jpeg(200, 100), {"max_image_area": 10_000}, Reason.TOO_MANY_PIXELS, Reason.TOO_MANY_PIXELS),
    ("html", b"<html></html>", {}, Reason.NOT_AN_IMAGE, Reason.NOT_AN_IMAGE),
]


@pytest.fixture
def pixel_loads(monkeypatch):
    """Every Pillow pixel load (ImageFile.load) inspect_image starts, by size."""
    loads = []
    load = ImageFile.ImageFile.load

    def recording_load(self):
        loads.append(self.size)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    return loads


@pytest.mark.parametrize("decode_check", ["full", "none"])
@pytest.mark.parametrize(
    "data, change, full, none", [c[1:] for c in DECODE_CHECK_CASES], ids=[c[0] for c in DECODE_CHECK_CASES]
)
def test_decode_check(data, change, full, none, decode_check, pixel_loads):
    result = inspect_image(data, dataclasses.replace(OPTIONS, decode_check=decode_check, **change))
    reason = full if decode_check == "full" else none
    assert (result.rejection.reason if result.rejection else None) == reason, result.rejection
    if reason is None:
        assert result.image == data  # stored as downloaded
    else:
        assert result.image is None
    if decode_check == "none":
        assert pixel_loads == []  # no pixel is decoded


def test_other_formats_are_decoded_whatever_the_decode_check():
    bmp = images.encode(images.rgb(), "BMP")
    for decode_check in ("full", "none"):
        result = inspect_image(bmp, dataclasses.replace(OPTIONS, decode_check=decode_check))
        assert result.rejection is None and result.values["image_format"] == "PNG"
        truncated = inspect_image(bmp[:-500], dataclasses.replace(OPTIONS, decode_check=decode_check))
        assert truncated.rejection.reason == Reason.DECODE_ERROR


# Plain images: the resizer gets the downloaded bytes.
PLAIN = {
    "jpeg_rgb": images.encode(images.rgb(640, 480), "JPEG", quality=85),
    "jpeg_rgb_444": images.encode(images.rgb(300, 500), "JPEG", quality=95, subsampling=0),
    "jpeg_progressive": images.encode(images.rgb(333, 257), "JPEG", progressive=True),
    "jpeg_grey": images.grey_jpeg(401, 299),
    "png_rgb": images.png(300, 200),
    "png_grey": images.grey_png(200, 300),
    "mpo": images.mpo(320, 240),
}
# Images Pillow must fix first (orientation, colour, alpha, palette, depth): decoded by Pillow.
NEEDS_PILLOW = {
    "exif_rotated_jpeg": images.exif_rotated_jpeg(80, 40),
    "cmyk_jpeg": images.cmyk_jpeg(),
    "palette_png": images.palette_png(),
    "transparent_palette_png": images.transparent_palette_png(),
    "rgba_png": images.rgba_png(),
    "la_png": images.la_png(),
    "trns_png": images.trns_png(),
    "png16": images.png16(),
    "rgb16_png": images.rgb16_png(),
    "grey4_png": images.grey4_png(),
    "webp": images.webp(),
    "gif": images.animated_gif(),
}
RESIZE_MODES = ["border", "keep_ratio", "keep_ratio_largest", "center_crop"]


@pytest.fixture(scope="module")
def resizers():
    return {mode: _resizer(dataclasses.replace(OPTIONS, resize=mode, image_size=96)) for mode in RESIZE_MODES}


def pixels(jpeg: bytes) -> tuple[str, np.ndarray]:
    with Image.open(io.BytesIO(jpeg)) as im:
        return im.mode, np.asarray(im.convert("RGB")).astype(np.int32)


@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize("name", sorted(PLAIN))
def test_resizing_the_bytes_gives_what_the_pillow_decode_gives(name, mode, resizers):
    data = PLAIN[name]
    info = probe_image(data)
    fast = resize(data, info, resizers[mode], from_bytes=True)
    pillow = resize(data, info, resizers[mode], from_bytes=False)
    assert not isinstance(fast, Rejection) and not isinstance(pillow, Rejection)
    assert fast[1:] == pillow[1:]  # width, height
    if info.mode == "RGB":
        assert fast[0] == pillow[0]  # byte for byte: cv2 and Pillow decode these to the same pixels
        return
    # Greyscale: cv2 keeps one channel, so the resizer writes a greyscale JPEG where the Pillow
    # path (RGB) writes a colour one; the pixels are the same.
    (fast_mode, fast_px), (pillow_mode, pillow_px) = pixels(fast[0]), pixels(pillow[0])
    assert (fast_mode, pillow_mode) == ("L", "RGB")
    assert np.array_equal(fast_px, pillow_px)


@pytest.mark.parametrize("name", sorted(PLAIN) + sorted(NEEDS_PILLOW))
def test_which_path_inspect_image_takes(name, resizers, monkeypatch):
    data = PLAIN.get(name) or NEEDS_PILLOW[name]
    decoded = []
    decode_image = stages.decode_image
    monkeypatch.setattr(stages, "decode_image", lambda *a: decoded.append(1) or decode_image(*a))
    result = inspect_image(data, dataclasses.replace(OPTIONS, resize="keep_ratio", image_size=96), resizers["keep_ratio"])
    assert result.rejection is None, result.rejection
    assert result.values["image_format"] == "JPEG"
    assert bool(decoded) == (name in NEEDS_PILLOW)
    info = probe_image(data)
    assert min(result.values["width"], result.values["height"]) == 96
    assert (result.values["width"] > result.values["height"]) == (info.width > info.height)


def cut_in_scan(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


TRUNCATED = {
    "jpeg": cut_in_scan(images.encode(images.rgb(640, 480), "JPEG", quality=85)),
    "jpeg_without_eoi": images.jpeg(256, 256)[:-2],
    "progressive_jpeg": cut_in_scan(images.progressive_jpeg()),
    "grey_jpeg": cut_in_scan(images.grey_jpeg(256, 256)),
    "png": images.png(256, 256)[:-200],
    "cmyk_jpeg": cut_in_scan(images.cmyk_jpeg(256, 256)),  # decoded by Pillow: always checked
}


@pytest.mark.parametrize("name", sorted(TRUNCATED))
def test_truncated_images_are_rejected_with_resize(name, resizers, pixel_loads):
    data = TRUNCATED[name]
    assert isinstance(probe_image(data), ImageInfo)  # the header is whole: the pixel data is cut
    options = dataclasses.replace(OPTIONS, resize="border", image_size=96)
    result = inspect_image(data, options, resizers["border"])
    assert result.rejection.reason == Reason.DECODE_ERROR and result.image is None
    assert "truncated" in result.rejection.message.lower()  # our check's words, not the resizer's
    # --decode-check none: plain JPEG/PNG are then judged by the resizer's own decode only.
    # opencv-python 4.14 refuses truncated JPEG and PNG ("resize failed: Image decoding error");
    # older builds decoded a truncated JPEG without an error, which is why the check exists.
    pixel_loads.clear()
    result = inspect_image(data, dataclasses.replace(options, decode_check="none"), resizers["border"])
    assert result.rejection is None or result.rejection.reason == Reason.DECODE_ERROR
    if name == "cmyk_jpeg":
        assert result.rejection.reason == Reason.DECODE_ERROR and "truncated" in result.rejection.message
    else:
        assert pixel_loads == []  # Pillow decoded nothing
