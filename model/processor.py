"""Images, prompts and token ids for the model, usable without loading any weights.

A CPU pipeline stage calls `ImageProcessor.from_model_dir(dir).preprocess(image)` and hands the
arrays to the model actor; this module imports neither torch nor the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from model.config import COGVLM, CheckpointError, ModelConfig, read_config_json

# spec: CLIP normalization
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)

LANGUAGE_TYPE, VISION_TYPE = 0, 1

# spec: templates; each names the marker that ends a question
ANSWER_MARKERS = {"chat": "Answer:", "vqa": "Short answer:"}
TEMPLATES = ("base", "chat", "vqa")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


@dataclass(frozen=True)
class ImageProcessor:
    image_size: int

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> "ImageProcessor":
        """Reads only config.json."""
        raw = read_config_json(model_dir)
        try:
            return cls(int(raw["vision_config"]["image_size"]))
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{model_dir}/config.json has no vision_config.image_size") from None

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """PIL image -> float32 [3, S, S], CLIP-normalized: normalize(resize(image))."""
        return self.normalize(self.resize(image))

    def resize(self, image: Image.Image) -> np.ndarray:
        """PIL image -> uint8 [3, S, S]; a quarter of the float bytes to ship between stages."""
        # spec: RGB, bicubic resize to S x S ignoring the aspect ratio
        rgb = image.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
        return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))

    @staticmethod
    def normalize(pixels: np.ndarray) -> np.ndarray:
        """uint8 [..., 3, S, S] -> float32, scaled to [0, 1] and CLIP-normalized (spec)."""
        x = pixels.astype(np.float32) / 255.0
        return (x - CLIP_MEAN[:, None, None]) / CLIP_STD[:, None, None]


def read_template_version(model_dir: str | Path) -> str:
    """The checkpoint's default template, from config.json alone."""
    return ModelConfig.from_dict(read_config_json(model_dir)).template_version


def apply_template(query: str, template: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """Wrap a query (and earlier (question, answer) turns) in a checkpoint's template."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")
    if template == "base":
        return query  # spec: base is the query verbatim (the reference drops history here too)
    marker = ANSWER_MARKERS[template]
    # spec: earlier turns as "Question: {q} Answer: {a}\n"; vqa turns end in its own marker, as in the reference
    turns = "".join(f"Question: {q} {marker} {a}\n" for q, a in history)
    return f"{turns}Question: {query} {marker}"


def build_input_ids(text_ids: Sequence[int], cfg: ModelConfig) -> tuple[list[int], list[int]]:
    """Text token ids (no special tokens) -> (input ids, token types) of one unpadded row."""
    # spec: [bos] + [pad] * image tokens + text; image slots (boi, patches, eoi) are vision type
    n = cfg.num_image_tokens
    ids = [cfg.bos_token_id] + [cfg.pad_token_id] * n + list(text_ids)
    types = [LANGUAGE_TYPE] + [VISION_TYPE] * n + [LANGUAGE_TYPE] * len(text_ids)
    return ids, types


def find_tokenizer_dir(model_dir: str | Path, tokenizer_dir: str | Path | None) -> Path:
    if tokenizer_dir is not None:
        path = Path(tokenizer_dir)
        if not path.is_dir() or not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise CheckpointError(
                f"tokenizer directory {path} does not exist or holds none of {', '.join(TOKENIZER_FILES)}"
            )
        return path
    path = Path(model_dir)
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise CheckpointError(
            f"{path} holds no tokenizer; CogVLM (v1) checkpoints ship without one: pass the local "
            "Vicuna-7B v1.5 tokenizer directory (tokenizer_dir=..., --tokenizer DIR)"
        )
    return path


def load_tokenizer(model_dir: str | Path, tokenizer_dir: str | Path | None = None, cfg: ModelConfig | None = None):
    """The tokenizer of a local directory (the model's own when tokenizer_dir is None), giving the
    official code's ids and decoded text (model.tokenization), checked against the checkpoint's config.
    Runs no code from the directory and never asks whether it may."""
    cfg = cfg or ModelConfig.from_json(model_dir)
    path = find_tokenizer_dir(model_dir, tokenizer_dir)
    from model.tokenization import open_tokenizer  # sentencepiece / tokenizers: only the model actor needs them

    tokenizer = open_tokenizer(path)
    if len(tokenizer) > cfg.vocab_size or tokenizer.bos_token_id not in (None, cfg.bos_token_id):
        raise CheckpointError(
            f"tokenizer in {path} does not fit this checkpoint ({len(tokenizer)} tokens, bos "
            f"{tokenizer.bos_token_id}; the model has {cfg.vocab_size} tokens, bos {cfg.bos_token_id}): "
            + ("use the Vicuna-7B v1.5 tokenizer" if cfg.variant == COGVLM else "use the checkpoint's own")
        )
    return tokenizer
