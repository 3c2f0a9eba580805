"""Image bytes for tests, made in memory: every format, mode and hostile shape we handle."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _pattern(width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 7) % 256, (y * 5) % 256, ((x + y) * 3) % 256], -1).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgb(width: int = 64, height: int = 48) -> Image.Image:
    return Image.fromarray(_pattern(width, height), "RGB")


def jpeg(width: int = 64, height: int = 48, quality: int = 90) -> bytes:
    return encode(rgb(width, height), "JPEG", quality=quality)


def png(width: int = 64, height: int = 48) -> bytes:
    return encode(rgb(width, height), "PNG")


def webp(width: int = 64, height: int = 48) -> bytes:
    return encode(rgb(width, height), "WEBP")


def cmyk_jpeg(width: int = 64, height: int = 48) -> bytes:
    return encode(rgb(width, height).convert("CMYK"), "JPEG")


def palette_png(width: int = 64, height: int = 48) -> bytes:
    return encode(rgb(width, height).convert("P"), "PNG")


def rgba_png(width: int = 64, height: int = 48) -> bytes:
    img = rgb(width, height).convert("RGBA")
    img.putalpha(128)
    return encode(img, "PNG")


def png16(width: int = 64, height: int = 48) -> bytes:
    arr = (_pattern(width, height)[..., 0].astype(np.uint16) * 257).astype(np.uint16)
    return encode(Image.fromarray(arr), "PNG")  # uint16 array -> mode I;16


def animated_gif(width: int = 64, height: int = 48, frames: int = 3) -> bytes:
    imgs = [rgb(width, height).rotate(15 * i) for i in range(frames)]
    return encode(imgs[0], "GIF", save_all=True, append_images=imgs[1:], duration=50, loop=0)


def exif_rotated_jpeg(width: int = 80, height: int = 40, orientation: int = 6) -> bytes:
    """Stored width x height; displayed height x width for orientation 6 or 8."""
    img = rgb(width, height)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", exif=exif.tobytes())


def truncated_jpeg(width: int = 256, height: int = 256) -> bytes:
    data = jpeg(width, height)
    return data[: len(data) // 2]


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG header claiming width x height pixels with a tiny compressed body.

    Only the header is ever meant to be read: decoding it would allocate gigabytes.
    """

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    row = b"\x00" + b"\x00" * width
    idat = zlib.compress(row * 16, 9)  # a few rows only: the file stays small
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def progressive_jpeg(width: int = 256, height: int = 256) -> bytes:
    return encode(rgb(width, height), "JPEG", quality=90, progressive=True)


def la_png(width: int = 64, height: int = 48) -> bytes:
    """Greyscale with alpha 128 everywhere."""
    img = rgb(width, height).convert("L").convert("LA")
    img.putalpha(128)
    return encode(img, "PNG")


def transparent_palette_png(width: int = 64, height: int = 48) -> bytes:
    """Palette image: left half index 0 (black, fully transparent), right half index 1 (opaque red)."""
    img = Image.new("P", (width, height), 0)
    img.putpalette([0, 0, 0, 255, 0, 0])
    img.paste(1, (width // 2, 0, width, height))
    return encode(img, "PNG", transparency=0)


def webp_bomb(width: int = 16383, height: int = 16383) -> bytes:
    """A small lossless WebP whose header is patched to claim width x height.

    Only the header is meaningful (the body is still the 64x64 image's): Pillow's WebP
    plugin must refuse the claimed size before libwebp allocates a canvas for it.
    """
    data = bytearray(encode(Image.new("RGB", (64, 64), (10, 20, 30)), "WEBP", lossless=True))
    assert data[12:16] == b"VP8L" and data[20] == 0x2F  # simple lossless layout
    # 14 bits width - 1, 14 bits height - 1, then alpha and version bits we keep.
    (bits,) = struct.unpack("<I", data[21:25])
    bits = (bits & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
    data[21:25] = struct.pack("<I", bits)
    return bytes(data)


def png_claiming(width: int, height: int) -> bytes:
    """57 bytes: a PNG signature, an IHDR claiming width x height (any 32-bit numbers), an empty IDAT."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def truncated_animated_gif(width: int = 64, height: int = 48) -> bytes:
    """An animated GIF cut just inside its second frame: the first frame is whole."""
    data = animated_gif(width, height, frames=3)
    second = data.index(b"\x21\xf9\x04", data.index(b"\x21\xf9\x04") + 1)  # its graphic control block
    return data[: second + 30]


def grey_jpeg(width: int = 64, height: int = 48) -> bytes:
    return encode(rgb(width, height).convert("L"), "JPEG", quality=90)


def grey_png(width: int = 64, height: int = 48) -> bytes:
    return encode(rgb(width, height).convert("L"), "PNG")


def grey4_png(width: int = 64, height: int = 48) -> bytes:
    """4 bits per sample: Pillow opens it as mode L, scaling 0..15 to 0..255."""
    return encode(rgb(width, height).convert("L"), "PNG", bits=4)


def trns_png(width: int = 64, height: int = 48) -> bytes:
    """RGB with a tRNS chunk: the colour (0, 0, 0) is transparent, the mode is still RGB."""
    return encode(rgb(width, height), "PNG", transparency=(0, 0, 0))


def rgb16_png(width: int = 64, height: int = 48) -> bytes:
    """16 bits per RGB sample, written by hand (Pillow cannot save it and opens it as mode RGB)."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    samples = (_pattern(width, height).astype(">u2") * 257).tobytes()
    stride = width * 6
    raw = b"".join(b"\x00" + samples[y * stride : (y + 1) * stride] for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def mpo(width: int = 64, height: int = 48) -> bytes:
    """A multi-picture JPEG (two images); Pillow names it MPO."""
    return encode(rgb(width, height), "MPO", save_all=True, append_images=[rgb(width, height).rotate(90)])
