"""Image filters: read the header, judge the size, verify or fully decode the pixels.

Every function takes bytes or values and returns a result; none raises on bad input.
A `Finding` says why a row is dropped and `None` means it passes.

Decompression bombs: `Image.open` refuses images above twice `Image.MAX_IMAGE_PIXELS`
(about 179 M pixels) with `DecompressionBombError` before telling us their size. Turning
that guard off means writing the process-wide `Image.MAX_IMAGE_PIXELS`, which races with
other threads decoding at the same time. So `probe_image` identifies the file itself, by
walking Pillow's plugin registry (`Image.ID` / `Image.OPEN`, the tables `Image.open`
walks) and calling the matching plugin's constructor, which parses the header only. That
reads the claimed size without the guard and without touching global state, and
`check_area` rejects it from the header. A few plugins, WebP among them, run the guard
inside their own parser because their decoder allocates the canvas at open; for those
`probe_image` itself returns TOO_MANY_PIXELS with Pillow's pixel count but no width and
height. `decode_image`, `verify_decodes` and `reencode_png` go through `Image.open`, so
Pillow's guard stays on wherever pixels are decoded.

Header numbers are untrusted: a side of 0, less, or more than `MAX_SIDE` is IMPOSSIBLE_SIZE
with the claimed size in the message. Orientation is applied exactly once: by us, from the
EXIF tag, except for formats whose Pillow plugin already reports and loads frames upright
(TIFF since Pillow 11; measured at import, see `_ORIENTED_BY_PILLOW`). Only the first frame
is ever read: nothing here counts or walks the frames of an animation.

`can_resize_from_bytes` says, from the header alone, when another decoder (cv2, in
img2dataset's resizer) would read the bytes as the same pixels `decode_image` makes, so that
the Pillow decode can be skipped.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile

from filters.findings import Finding, Problem

_EXIF_ORIENTATION = 0x0112

# EXIF orientation -> the transpose that shows the image upright (the EXIF 2.3 table).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = {5, 6, 7, 8}
# The largest side our int32 width/height columns hold, and more than any decodable image has.
MAX_SIDE = 2**31 - 1

# Formats kept as downloaded, by the extension webdataset loaders expect for them (MPO is a
# JPEG with more images appended). Other formats are re-encoded with `reencode_png`.
STORED_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"}  # modes PNG stores exactly as they are
_WHITE = (255, 255, 255, 255)
_SCALABLE_FORMATS = {"JPEG", "MPO"}  # libjpeg can decode these at 1/2, 1/4 or 1/8 scale
_PLAIN_DECODE_FORMATS = {"JPEG", "MPO", "PNG"}  # see `can_resize_from_bytes`
_PNG_IHDR_BIT_DEPTH = 24  # signature (8), chunk length (4), b"IHDR" (4), width (4), height (4)

# Pillow's process-wide switch that makes truncated files decode without error. Should
# anything in the process turn it on, every row fails loudly rather than truncated
# images passing silently.
_TRUNCATION_UNCHECKABLE = Finding(
    Problem.BROKEN_IMAGE,
    "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set in this process: truncation cannot be detected",
)


def _oriented_by_pillow() -> frozenset[str]:
    """Formats whose plugin applies the EXIF orientation itself: size reported upright at open,
    pixels transposed at load (TIFF since Pillow 11). Measured on a 2x1 image tagged
    "rotate 90", so neither a Pillow upgrade nor a downgrade makes us rotate twice or never."""
    exif = Image.Exif()
    exif[_EXIF_ORIENTATION] = 6
    found = set()
    for fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        buf = io.BytesIO()
        try:
            Image.new("L" if fmt != "WEBP" else "RGB", (2, 1)).save(buf, format=fmt, exif=exif.tobytes())
            with Image.open(buf) as im:
                if im.size == (1, 2):
                    found.add(fmt)
        except Exception:  # a codec missing from this Pillow build: we never see that format
            continue
    return frozenset(found)


_ORIENTED_BY_PILLOW = _oriented_by_pillow()


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header claims. `width`/`height` are as displayed (orientation applied)."""

    format: str  # Pillow's name: JPEG, PNG, WEBP, GIF, MPO, TIFF, BMP, ...
    stored_width: int  # the first frame as Pillow loads it, before we apply `orientation`
    stored_height: int
    mode: str
    orientation: int  # EXIF orientation 1..8 still to apply after loading; 1 when none is
    # Bits per sample the file stores, where its header says (JPEG's frame header, PNG's IHDR);
    # None for other formats. Pillow's mode hides it: a 16-bit RGB PNG opens as "RGB", 2- and
    # 4-bit greyscale as "L".
    sample_bits: int | None = None
    transparency: bool = False  # a transparent colour or palette entry (PNG tRNS, GIF, ...)

    @property
    def width(self) -> int:
        return self.stored_height if self.orientation in _SWAPS_SIDES else self.stored_width

    @property
    def height(self) -> int:
        return self.stored_width if self.orientation in _SWAPS_SIDES else self.stored_height

    @property
    def pixels(self) -> int:
        return self.stored_width * self.stored_height


def probe_image(data: bytes) -> ImageInfo | Finding:
    """Read format, size, mode and orientation from the header; decode nothing, walk no frames."""
    try:
        im = _open_header(data)
        if im is None:
            return Finding(Problem.NOT_AN_IMAGE, f"not a recognised image format ({_describe(data)})")
        width, height = im.size
        if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
            return Finding(
                Problem.IMPOSSIBLE_SIZE,
                f"{im.format} header claims {width}x{height} pixels; a side must be 1 to {MAX_SIDE}",
            )
        return ImageInfo(
            format=im.format,
            stored_width=width,
            stored_height=height,
            mode=im.mode,
            orientation=1 if im.format in _ORIENTED_BY_PILLOW else _orientation(im),
            sample_bits=_sample_bits(im, data),
            transparency="transparency" in im.info,
        )
    except Image.DecompressionBombError as e:  # raised by plugins that guard inside their parser
        return _refused(e)
    except Exception as e:  # a plugin recognised the file but its header is broken
        return Finding(Problem.BROKEN_IMAGE, f"unreadable image header: {_error(e)}")


def can_resize_from_bytes(info: ImageInfo) -> bool:
    """True when a plain decoder (cv2.imdecode, which img2dataset's resizer uses) reads these
    bytes as the pixels `decode_image` makes: JPEG (MPO: its first image) or PNG, 8 bits per
    sample, greyscale or RGB, nothing transparent, no EXIF orientation to apply. (Greyscale
    stays one channel there; `decode_image` makes RGB of it.)

    Everything else (CMYK, alpha, palette, tRNS, 16-bit or 1/2/4-bit samples, rotated images,
    other formats) needs `decode_image` first. Decides from the header alone: truncation is
    not judged here (see `verify_decodes`).
    """
    return (
        info.format in _PLAIN_DECODE_FORMATS
        and info.mode in ("RGB", "L")
        and info.sample_bits == 8
        and not info.transparency
        and info.orientation == 1
    )


def check_size(info: ImageInfo, min_image_size: int) -> Finding | None:
    """Reject when the shorter displayed side is below `min_image_size` pixels."""
    shorter = min(info.width, info.height)
    if shorter < min_image_size:
        return Finding(
            Problem.TOO_SMALL,
            f"shorter side {shorter} px below {min_image_size} ({info.width}x{info.height})",
        )
    return None


def check_aspect_ratio(info: ImageInfo, max_aspect_ratio: float = 6.0) -> Finding | None:
    """Reject when width/height is above `max_aspect_ratio` or below its inverse.

    Exactly max:1 and 1:max are kept. The comparison multiplies instead of dividing so
    that 1:6 is not lost to the rounding of 1/6.
    """
    width, height = info.width, info.height
    if width > max_aspect_ratio * height:
        bound = f"beyond {max_aspect_ratio:g}"
    elif height > max_aspect_ratio * width:
        bound = f"below 1/{max_aspect_ratio:g}"
    else:
        return None
    return Finding(Problem.ASPECT_RATIO, f"aspect ratio {width / height:.2f} ({width}x{height}) {bound}")


def check_area(info: ImageInfo, max_image_area: int) -> Finding | None:
    """Reject when the header claims more than `max_image_area` pixels."""
    if info.pixels > max_image_area:
        return Finding(
            Problem.TOO_MANY_PIXELS,
            f"{info.pixels} pixels ({info.width}x{info.height}) above {max_image_area}"
            " (decided from the header, not decoded)",
        )
    return None


def decode_image(data: bytes, info: ImageInfo) -> Image.Image | Finding:
    """Decode the first frame in full, upright and in RGB.

    Transparent pixels are composited on white; 16-bit greyscale is scaled to 8 bits.
    `info` must come from `probe_image(data)`: its orientation is applied, so the result
    is exactly `info.width` x `info.height`.
    """
    return _upright_first_frame(data, info, _to_rgb)


def reencode_png(data: bytes, info: ImageInfo) -> bytes | Finding:
    """The first frame, upright, as PNG: for decodable formats loaders do not expect (BMP,
    TIFF, PPM, PSD, ICO, AVIF, ...). Lossless wherever PNG holds the mode (bilevel, greyscale,
    16-bit greyscale, palette, RGB, with or without alpha); CMYK, YCbCr, LAB and HSV become
    RGB, and 32-bit or float greyscale beyond 16 bits is scaled to 8 bits as in `decode_image`.
    """
    frame = _upright_first_frame(data, info, _png_storable)
    if isinstance(frame, Finding):
        return frame
    buf = io.BytesIO()
    frame.save(buf, format="PNG")
    return buf.getvalue()


def _upright_first_frame(data: bytes, info: ImageInfo, convert) -> Image.Image | Finding:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        return _TRUNCATION_UNCHECKABLE
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # the first frame; a truncated file raises here
            frame = convert(im)  # a new image, so closing `im` is safe
        method = _UPRIGHT.get(info.orientation)
        return frame.transpose(method) if method is not None else frame
    except Image.DecompressionBombError as e:
        return _refused(e)
    except Exception as e:
        return Finding(Problem.BROKEN_IMAGE, _error(e))


def verify_decodes(data: bytes, info: ImageInfo) -> Finding | None:
    """Check that the first frame decodes to the end, as cheaply as possible.

    JPEG is decoded at 1/8 scale in greyscale: the entropy-coded data of every component is
    still read to the last byte, so truncation is caught, but the inverse DCT runs on 1/64
    of the blocks and colour conversion is skipped. Other formats are decoded in full.
    `info` is `probe_image(data)`; its format picks the path.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        return _TRUNCATION_UNCHECKABLE
    try:
        with Image.open(io.BytesIO(data)) as im:
            if info.format in _SCALABLE_FORMATS:
                im.draft("L", (1, 1))  # the smallest scale libjpeg offers: 1/8
            im.load()
        return None
    except Image.DecompressionBombError as e:
        return _refused(e)
    except Exception as e:
        return Finding(Problem.BROKEN_IMAGE, _error(e))


def _open_header(data: bytes) -> ImageFile.ImageFile | None:
    """Identify `data` the way `Image.open` does, minus its decompression-bomb guard.

    Returns None when no plugin recognises the bytes. Exceptions a plugin raises to say
    "not my format" move on to the next one, as in `Image.open`; others propagate.
    """
    Image.init()
    prefix = data[:16]
    for format_id in Image.ID:
        factory, accept = Image.OPEN[format_id]
        try:
            verdict = accept(prefix) if accept else True
            if verdict and not isinstance(verdict, str):  # a string explains why not
                return factory(io.BytesIO(data), "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue
    return None


def _sample_bits(im: ImageFile.ImageFile, data: bytes) -> int | None:
    """Bits per sample from the header: JPEG's frame header (Pillow opens 8-bit only), PNG's IHDR."""
    if im.format in _SCALABLE_FORMATS:
        return getattr(im, "bits", None)
    if im.format == "PNG" and data[12:16] == b"IHDR" and len(data) > _PNG_IHDR_BIT_DEPTH:
        return data[_PNG_IHDR_BIT_DEPTH]
    return None


def _orientation(im: Image.Image) -> int:
    """EXIF orientation from what the header parse already read; 1 if absent or broken."""
    try:
        # The base implementation only reads metadata parsed at open. PngImageFile
        # overrides it to decode the whole image in search of a late eXIf chunk.
        value = Image.Image.getexif(im).get(_EXIF_ORIENTATION, 1)
        return value if value in _UPRIGHT else 1
    except Exception:  # broken EXIF is not a reason to drop a readable image
        return 1


def _to_rgb(im: Image.Image) -> Image.Image:
    """A new RGB image of a loaded frame, whatever its mode."""
    if im.mode in _SIXTEEN_BIT_MODES:
        # Pillow's own I;16 -> L conversion clips at 255; scale the full range instead.
        wide = np.asarray(im).astype(np.int64).clip(0, 65535)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")  # applies a palette's or tRNS transparency as alpha
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return im.convert("RGB")  # a copy even when already RGB, so closing `im` is safe


def _png_storable(im: Image.Image) -> Image.Image:
    """A new image of a loaded frame in a mode PNG stores, changing the pixels only where it must."""
    if im.mode in _PNG_MODES:
        return im.copy()
    if im.mode in ("PA", "RGBa"):
        return im.convert("RGBA")
    if im.mode == "La":
        return im.convert("LA")
    if im.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(im).astype(np.int64)
        if wide.size and 0 <= wide.min() and wide.max() <= 65535:
            return Image.fromarray(wide.astype(np.uint16))  # uint16 -> I;16, exactly
    return _to_rgb(im)


def _refused(e: Image.DecompressionBombError) -> Finding:
    return Finding(Problem.TOO_MANY_PIXELS, f"Pillow refused the header, nothing decoded: {e}")


def _describe(data: bytes) -> str:
    if not data:
        return "0 bytes"
    return f"{len(data)} bytes starting {data[:8]!r}"


def _error(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"
