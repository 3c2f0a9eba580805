"""Video bytes for tests, encoded in memory with PyAV: good clips and hostile ones.

Each frame's colour encodes its index (red = 8 * index), so a test can tell which frames came back.
"""

from __future__ import annotations

import io
import os
import tempfile
from fractions import Fraction

import av
import numpy as np


def frame_pattern(index: int, width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    red = np.full((height, width), (8 * index) % 256)
    return np.stack([red, (x * 3) % 256, (y * 3) % 256], -1).astype(np.uint8)


def encode(
    seconds: float = 2.0,
    fps: int = 10,
    width: int = 64,
    height: int = 48,
    container: str = "mp4",
    codec: str = "libx264",
    audio: bool = False,
    frames: int | None = None,
    pix_fmt: str = "yuv420p",
) -> bytes:
    """A clip of `frames` (default seconds x fps) frames at `fps`; mp4s are written faststart
    (index first), as web servers serve them (which needs a real file to rewrite)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "clip")
        options = {"movflags": "faststart"} if container == "mp4" else {}
        with av.open(path, mode="w", format=container, options=options) as out:
            _write_clip(out, seconds, fps, width, height, codec, audio, frames, pix_fmt)
        with open(path, "rb") as f:
            return f.read()


def _write_clip(out, seconds, fps, width, height, codec, audio, frames, pix_fmt) -> None:
    stream = out.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    if codec == "libx264":
        stream.options = {"preset": "ultrafast", "tune": "zerolatency"}  # no B-frames: pts in order
    sound = out.add_stream("aac", rate=16000) if audio else None
    count = round(seconds * fps) if frames is None else frames
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(frame_pattern(i, width, height), format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, fps)
        out.mux(stream.encode(frame))
    out.mux(stream.encode())
    if sound is not None:
        _mux_silence(out, sound, seconds)


def _mux_silence(out, stream, seconds: float) -> None:
    samples = 1024
    for i in range(int(seconds * stream.rate / samples) + 1):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, samples), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = stream.rate, i * samples
        out.mux(stream.encode(frame))
    out.mux(stream.encode())


def audio_only(seconds: float = 1.0) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        _mux_silence(out, out.add_stream("aac", rate=16000), seconds)
    return buf.getvalue()


def zero_frames() -> bytes:
    """An mp4 whose video track never got a frame (FFmpeg's muxer then leaves the track out)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "empty.mp4")
        with av.open(path, mode="w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=10)
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
            out.start_encoding()
        with open(path, "rb") as f:
            return f.read()


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def huge(width: int = 8192, height: int = 8192) -> bytes:
    """One flat frame at a resolution beyond any sane limit (67 M pixels), H.264 in Matroska."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="matroska") as out:
        stream = out.add_stream("libx264", rate=1)
        stream.options = {"preset": "ultrafast"}
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.pts, frame.time_base = 0, Fraction(1, 1)
        out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return buf.getvalue()
