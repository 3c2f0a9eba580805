"""CogVLM2-Video inputs without weights or torch: frame sampling, frame preprocessing, sequence layout.

Facts follow shared/spec/cogvlm2-video.md ("spec" in comments). A CPU pipeline stage samples and
preprocesses frames with these functions and hands the float arrays to the model actor;
`model.api.VisualExpertModel.generate_videos` takes either those arrays or `Video`s (decoded frames
with their timestamps) and preprocesses the latter itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from model.config import VIDEO_IMAGE_SIZE, ModelConfig
from model.processor import CLIP_MEAN, CLIP_STD, LANGUAGE_TYPE, VISION_TYPE

MAX_FRAMES = 24  # spec: chat sampling stops after 24 picks; base sampling takes 24
BASE_SECONDS = 60  # spec: base sampling covers the first 60 s
# spec: the caption tool's prompt and settings (CogVideo tools/caption/video_caption.py): greedy, 2048 new tokens
CAPTION_PROMPT = "Please describe this video in detail."
CAPTION_MAX_NEW_TOKENS = 2048
DEFAULT_TEMPLATE = "chat"  # spec: the caption tool and the chat demo pass `chat`, whatever config.json says


@dataclass(frozen=True)
class Video:
    """Decoded frames and when each starts, in seconds; the model sees the frames in this order."""

    frames: np.ndarray  # uint8 [T, H, W, 3] RGB
    timestamps: tuple[float, ...]

    def __post_init__(self):
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got {self.frames.dtype} {self.frames.shape}")
        if len(self.timestamps) != len(self.frames) or not len(self.frames):
            raise ValueError("a video needs at least one frame and one timestamp per frame")


# ----------------------------------------------------------------------------- frame sampling


def sampling_for(template: str) -> str:
    """spec: the base model samples `base`; the chat model and the caption tool sample `chat`."""
    return "base" if template == "base" else "chat"


def sample_chat(timestamps: Sequence[float], max_frames: int = MAX_FRAMES) -> list[int]:
    """spec: for each whole second s = 0 .. round(max ts), the frame starting closest to s (the first
    on a tie; repeats allowed), at most 24 picks. Python's round: halves go to the even number."""
    ts = np.asarray(timestamps, dtype=np.float64)
    picks = []
    for second in range(round(float(ts.max())) + 1):
        if len(picks) == max_frames:
            break
        picks.append(int(np.argmin(np.abs(ts - second))))  # argmin: the first of equal distances
    return picks


def sample_base(num_frames: int, average_fps: float, max_frames: int = MAX_FRAMES) -> list[int]:
    """spec: 24 frames at linspace(0, end - 1, 24) truncated, end = min(frame count, int(60 x fps))."""
    end = min(num_frames, int(BASE_SECONDS * average_fps))
    return [int(i) for i in np.linspace(0, max(end, 1) - 1, max_frames)]


def sample_frames(template: str, timestamps: Sequence[float], average_fps: float) -> list[int]:
    """Which frames (indices into the video's frames, in order) the model sees under `template`."""
    if sampling_for(template) == "base":
        return sample_base(len(timestamps), average_fps)
    return sample_chat(timestamps)


# ----------------------------------------------------------------------------- preprocessing


def resized_size(height: int, width: int, short: int = VIDEO_IMAGE_SIZE) -> tuple[int, int]:
    """spec: short side to 224, (floor(H / W x 224), 224) if W < H else (224, floor(W / H x 224))."""
    if width < height:
        return math.floor(height / width * short), short
    return short, math.floor(width / height * short)


def crop_offsets(height: int, width: int, size: int = VIDEO_IMAGE_SIZE) -> tuple[int, int]:
    return int(round((height - size) / 2)), int(round((width - size) / 2))  # spec: Python round


def _bilinear_taps(in_size: int, out_size: int, first: int, count: int):
    """Source indices and weights of output pixels first..first+count of an `in_size -> out_size`
    resize, as torch's bilinear interpolate computes them (align_corners=False, no antialias)."""
    scale = np.float32(in_size / out_size)
    dst = np.arange(first, first + count, dtype=np.float64)
    # float32 scale x (dst + 0.5) - 0.5 with one rounding, as torch's kernel computes it (a fused
    # multiply-add): the float64 product of two float32 values is exact
    src = np.maximum((np.float64(scale) * (dst + 0.5) - 0.5).astype(np.float32), np.float32(0))
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, (np.float32(1) - w1), w1


def preprocess_frame(rgb: np.ndarray, size: int = VIDEO_IMAGE_SIZE) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, 224, 224]: /255, CLIP-normalise, bilinear short side to 224,
    centre crop (spec, in that order). Only the source pixels the crop reads are normalised, which
    changes no value: normalising is per pixel and each output reads its four taps alone."""
    height, width = rgb.shape[:2]
    out_h, out_w = resized_size(height, width, size)
    top, left = crop_offsets(out_h, out_w, size)
    r0, r1, rw0, rw1 = _bilinear_taps(height, out_h, top, size)
    c0, c1, cw0, cw1 = _bilinear_taps(width, out_w, left, size)
    rows, cols = np.unique(np.concatenate([r0, r1])), np.unique(np.concatenate([c0, c1]))
    block = rgb[rows][:, cols].astype(np.float32) / np.float32(255.0)  # [rows, cols, 3]
    block = (block - CLIP_MEAN) / CLIP_STD
    r0, r1 = np.searchsorted(rows, r0), np.searchsorted(rows, r1)  # indices into the block
    c0, c1 = np.searchsorted(cols, c0), np.searchsorted(cols, c1)
    x = block[r0] * rw0[:, None, None] + block[r1] * rw1[:, None, None]  # [224, cols, 3]
    x = x[:, c0] * cw0[None, :, None] + x[:, c1] * cw1[None, :, None]  # [224, 224, 3]
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_video(frames: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float32 [T, 3, 224, 224], the model input (spec: [T, 3, 224, 224])."""
    return np.stack([preprocess_frame(f) for f in frames])


# ----------------------------------------------------------------------------- sequence layout


def uses_time_tokens(template: str) -> bool:
    return template == "chat"  # spec: only `chat` puts the frame's ordinal after each frame


def build_video_input_ids(
    text_ids: Sequence[int], num_frames: int, cfg: ModelConfig, time_ids: Sequence[Sequence[int]] | None
) -> tuple[list[int], list[int]]:
    """(input ids, token types) of one unpadded row: [bos], per frame 66 vision slots (pad id) and,
    when time_ids is given (`chat`), the tokens of str(t); then the text (spec: no separators)."""
    per_frame = cfg.num_image_tokens  # boi + 64 + eoi
    ids, types = [cfg.bos_token_id], [LANGUAGE_TYPE]
    for t in range(num_frames):
        ids += [cfg.pad_token_id] * per_frame
        types += [VISION_TYPE] * per_frame
        if time_ids is not None:
            ids += list(time_ids[t])
            types += [LANGUAGE_TYPE] * len(time_ids[t])
    ids += list(text_ids)
    types += [LANGUAGE_TYPE] * len(text_ids)
    return ids, types
