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

from model.config import (
    COGAGENT,
    COGVLM,
    GLM4V,
    TEMPLATES_BY_VARIANT,
    CheckpointError,
    ModelConfig,
    detect_variant,
    read_config_json,
)
from model.glm4_tokenizer import is_glm4_tokenizer_dir, load_glm4_tokenizer

# spec: CLIP normalization
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)

LANGUAGE_TYPE, VISION_TYPE = 0, 1

# spec: templates; each names the marker that ends a question
ANSWER_MARKERS = {"chat": "Answer:", "vqa": "Short answer:"}
TEMPLATES = ("base", "chat", "vqa")
# spec (glm-4v.md): one placeholder per image; the model replaces its three embeddings by the image tokens
GLM4_IMAGE = "<|begin_of_image|><|endoftext|><|end_of_image|>"

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


@dataclass(frozen=True)
class ImageProcessor:
    """One image -> the model's pixel array, [3, S, S]; for CogAgent both resolutions packed side by
    side, [3, S*S + Sx*Sx] (low-res pixels, then high-res, row-major per channel): one array per image
    still, so batches stack and ship between stages like the others'. `split` unpacks a batch."""

    image_size: int
    cross_image_size: int | None = None  # CogAgent's high-res input

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> "ImageProcessor":
        """Reads only config.json."""
        raw = read_config_json(model_dir)
        try:
            cross = int(raw.get("cross_image_size", 1120)) if detect_variant(raw) == COGAGENT else None
            return cls(int(raw["vision_config"]["image_size"]), cross)
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{model_dir}/config.json has no vision_config.image_size") from None

    @property
    def pixel_shape(self) -> tuple[int, ...]:
        s, x = self.image_size, self.cross_image_size
        return (3, s, s) if x is None else (3, s * s + x * x)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """PIL image -> float32 pixel_shape, CLIP-normalized: normalize(resize(image))."""
        return self.normalize(self.resize(image))

    def resize(self, image: Image.Image) -> np.ndarray:
        """PIL image -> uint8 pixel_shape; a quarter of the float bytes to ship between stages."""
        # spec: RGB, bicubic resize to S x S ignoring the aspect ratio
        rgb = image.convert("RGB")
        low = self._resized(rgb, self.image_size)
        if self.cross_image_size is None:
            return low
        # spec (cogagent.md): each resolution resized directly from the original, never one from the other
        high = self._resized(rgb, self.cross_image_size)
        return np.concatenate([low.reshape(3, -1), high.reshape(3, -1)], axis=1)

    @staticmethod
    def _resized(rgb: Image.Image, size: int) -> np.ndarray:
        resized = rgb.resize((size, size), Image.BICUBIC)
        return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1))

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [..., *pixel_shape] -> float32, scaled to [0, 1] and CLIP-normalized (spec)."""
        x = pixels.astype(np.float32) / 255.0
        per_channel = (3,) + (1,) * (len(self.pixel_shape) - 1)
        return (x - CLIP_MEAN.reshape(per_channel)) / CLIP_STD.reshape(per_channel)

    def split(self, pixels):
        """[N, *pixel_shape] (numpy or torch) -> (low-res [N, 3, S, S], high-res [N, 3, Sx, Sx] or None)."""
        s, x = self.image_size, self.cross_image_size
        if x is None:
            return pixels, None
        n = pixels.shape[0]
        return pixels[:, :, : s * s].reshape(n, 3, s, s), pixels[:, :, s * s :].reshape(n, 3, x, x)


def read_template_version(model_dir: str | Path) -> str:
    """The checkpoint's default template, from config.json alone."""
    return ModelConfig.from_dict(read_config_json(model_dir)).template_version


def read_variant(model_dir: str | Path) -> str:
    """cogvlm, cogvlm2, cogagent or glm4v, from config.json alone."""
    return ModelConfig.from_dict(read_config_json(model_dir)).variant


def apply_template(query: str, template: str, history: Sequence[tuple[str, str]] = (), variant: str = COGVLM) -> str:
    """Wrap a query (and earlier (question, answer) turns) in a checkpoint's template; each variant
    has its own templates (CogAgent's `chat` and `vqa` are not CogVLM's)."""
    known = TEMPLATES_BY_VARIANT.get(variant, TEMPLATES)
    if template not in known:
        raise ValueError(f"unknown template {template!r} for {variant}; expected one of {known}")
    if variant == COGAGENT:
        return cogagent_template(query, template, history)
    if variant == GLM4V:
        return glm4_chat_template(query, history)
    if template == "base":
        return query  # spec: base is the query verbatim (the reference drops history here too)
    marker = ANSWER_MARKERS[template]
    # spec: earlier turns as "Question: {q} Answer: {a}\n"; vqa turns end in its own marker, as in the reference
    turns = "".join(f"Question: {q} {marker} {a}\n" for q, a in history)
    return f"{turns}Question: {query} {marker}"


def cogagent_template(query: str, template: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """spec (cogagent.md "Prompts"): `<EOI>` and ` [INST] ` are literal text, tokenized like any other."""
    if template == "base":
        return query
    if template == "vqa":  # history ignored, as in the official code
        return f"<EOI>Question: {query} Short answer:"
    if template == "chat_old":
        turns = "".join(f"{q} Answer: {a}\nQuestion: " for q, a in history)
        return f"<EOI>Question: {turns}{query} Answer:"
    turns = "".join(f"{q} [/INST] {a} [INST] " for q, a in history)  # chat: note the leading and trailing space
    return f" [INST] {turns}{query} [/INST] "


def glm4_chat_template(query: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """spec (glm-4v.md): `[gMASK]<sop>`, then `<|role|>` + metadata "\\n" + content per message, the image
    placeholder in the first user turn, and `<|assistant|>` alone to ask for the answer. Written as the
    string whose encoding (specials split out first) gives the official chat-template ids."""
    turns = [*history, (query, None)]
    out = "[gMASK]<sop>"
    for i, (q, a) in enumerate(turns):
        out += "<|user|>\n" + (GLM4_IMAGE if i == 0 else "") + q + "<|assistant|>"
        if a is not None:
            out += "\n" + a
    return out


def split_prompt_ids(ids: Sequence[int], cfg: ModelConfig) -> tuple[list[int], list[int]]:
    """An encoded templated prompt -> (the ids before the image, the text ids after it).

    CogVLM-style prompts hold text only: the row is [bos] + image + text. A GLM-4V prompt holds its
    image placeholder (boi, pad, eoi) after `[gMASK]<sop><|user|>\\n`.
    """
    if cfg.variant != GLM4V:
        return [cfg.bos_token_id], list(ids)
    ids = list(ids)
    where = [i for i, t in enumerate(ids) if t == cfg.boi_token_id]
    # spec: one image per sequence, eoi_pos - boi_pos == 2
    if len(where) != 1 or ids[where[0] + 1 : where[0] + 3] != [cfg.pad_token_id, cfg.eoi_token_id]:
        raise ValueError("a GLM-4V prompt needs exactly one image placeholder " + GLM4_IMAGE + " (use build_prompt)")
    return ids[: where[0]], ids[where[0] + 3 :]


def build_input_ids(text_ids: Sequence[int], cfg: ModelConfig, lead: Sequence[int] | None = None) -> tuple[list[int], list[int]]:
    """Text token ids (no special tokens) -> (input ids, token types) of one unpadded row.

    `lead` are the ids before the image: [bos] unless given (GLM-4V: `[gMASK]<sop><|user|>\n`).
    """
    # spec: [bos] + [pad] * image tokens + text; image slots (boi, patches, eoi) are vision type
    # spec (glm-4v.md): the placeholder's three ids become the image tokens, positions as CogVLM2's
    lead = [cfg.bos_token_id] if lead is None else list(lead)
    n = cfg.num_image_tokens
    ids = lead + [cfg.pad_token_id] * n + list(text_ids)
    types = [LANGUAGE_TYPE] * len(lead) + [VISION_TYPE] * n + [LANGUAGE_TYPE] * len(text_ids)
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
            f"{path} holds no tokenizer; CogVLM (v1) and CogAgent checkpoints ship without one: pass the local "
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

    # GLM-4's tokenizer class is remote code, never run: its files are converted (model/glm4_tokenizer.py)
    tokenizer = load_glm4_tokenizer(path) if is_glm4_tokenizer_dir(path) else open_tokenizer(path)
    if len(tokenizer) > cfg.vocab_size or tokenizer.bos_token_id not in (None, cfg.bos_token_id):
        raise CheckpointError(
            f"tokenizer in {path} does not fit this checkpoint ({len(tokenizer)} tokens, bos "
            f"{tokenizer.bos_token_id}; the model has {cfg.vocab_size} tokens, bos {cfg.bos_token_id}): "
            + ("use the Vicuna-7B v1.5 tokenizer" if cfg.variant in (COGVLM, COGAGENT) else "use the checkpoint's own")
        )
    return tokenizer
