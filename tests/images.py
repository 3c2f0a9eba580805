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
