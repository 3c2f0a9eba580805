"""The small API the labeling job uses: load a checkpoint, template prompts, generate.

    vem = VisualExpertModel.load("/models/cogvlm-chat-hf", tokenizer_dir="/models/vicuna-7b-v1.5")
    pixels = np.stack([vem.processor.preprocess(img) for img in images])
    outs = vem.generate(pixels, [vem.build_prompt("Describe the image.")] * len(images))

A video checkpoint (CogVLM2-Video, cogvlm2-llama3-caption) takes videos instead of images:

    vem = VisualExpertModel.load("/models/cogvlm2-llama3-caption")
    video = Video(frames, timestamps)  # decoded uint8 [T, H, W, 3] frames, sampled (model.video)
    outs = vem.generate_videos([video], [vem.build_prompt(CAPTION_PROMPT, "chat")], template="chat")
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from model.config import GLM4V, ModelConfig
from model.generate import GenerationSettings, RowResult, beam_search, generate_rows, layout_batch, layout_padded
from model.loading import default_device_and_dtype, load_model
from model.processor import ImageProcessor, apply_template, load_tokenizer, split_prompt_ids
from model.video import Video, build_video_input_ids, preprocess_video, uses_time_tokens

__all__ = ["Generation", "GenerationSettings", "VisualExpertModel"]


@dataclass
class Generation:
    text: str
    token_ids: list[int]  # generated ids, without the stop token
    finish_reason: str = "eos"  # "eos", or "length" when max_new_tokens cut it off


class VisualExpertModel:
    def __init__(self, model: nn.Module, tokenizer, model_dir: Path):
        self.model = model  # CogVLMForCausalLM, or ChatGLMForConditionalGeneration for GLM-4V
        self.config: ModelConfig = model.config
        self.tokenizer = tokenizer
        cross = self.config.cross_vision
        self.processor = ImageProcessor(self.config.vision.image_size, cross.image_size if cross else None)
        self.template_version = self.config.template_version
        self.device = model.lm_head.weight.device
        self.dtype = model.lm_head.weight.dtype
        self._config_hash = hashlib.sha256((model_dir / "config.json").read_bytes()).hexdigest()[:8]
        self._name = model_dir.resolve().name

    @classmethod
    def load(cls, model_dir, tokenizer_dir=None, device=None, dtype=None, rope_precision="official") -> "VisualExpertModel":
        """device default: cuda + bf16 if available, else cpu + fp32. Errors name what to fix.
        rope_precision: how the RoPE tables are built in bf16, "official" (default), "hf" or "fp32";
        all the same in fp32 (CogVLMForCausalLM.init_rope, README "RoPE numerics")."""
        model_dir = Path(model_dir)
        device, dtype = default_device_and_dtype(device, dtype)
        config = ModelConfig.from_json(model_dir)
        tokenizer = load_tokenizer(model_dir, tokenizer_dir, config)  # before the slow part: fail fast
        return cls(load_model(model_dir, device, dtype, rope_precision), tokenizer, model_dir)

    def describe(self) -> str:
        """Directory name and a short hash of config.json, e.g. "cogvlm-chat-hf@3f2a9c1b"."""
        return f"{self._name}@{self._config_hash}"

    def build_prompt(self, query: str, template: str | None = None, history: Sequence[tuple[str, str]] = ()) -> str:
        return apply_template(query, template or self.template_version, history, self.config.variant)

    @torch.no_grad()
    def generate(
        self,
        pixel_values: np.ndarray | torch.Tensor,  # [N_images, *processor.pixel_shape] float32, from ImageProcessor
        prompts: list[str],  # already templated, one per output row
        image_index: list[int] | None = None,  # row r uses image image_index[r]; default r -> r
        settings: GenerationSettings = GenerationSettings(),
    ) -> list[Generation]:
        """One Generation per prompt. Each image goes through the vision tower once, however many
        rows use it. A CUDA out-of-memory error propagates (torch.cuda.OutOfMemoryError): split the batch.
        With a video checkpoint the inputs are videos: see generate_videos."""
        if self.config.is_video:
            return self.generate_videos(pixel_values, prompts, image_index, settings=settings)
        pixels = torch.as_tensor(pixel_values)
        shape = self.processor.pixel_shape
        if tuple(pixels.shape[1:]) != shape:
            raise ValueError(f"pixel_values must be [N, {', '.join(map(str, shape))}], got {tuple(pixels.shape)}")
        if image_index is None:
            image_index = list(range(len(prompts)))
        if len(image_index) != len(prompts) or any(not 0 <= i < len(pixels) for i in image_index):
            raise ValueError(f"image_index must give one image in 0..{len(pixels) - 1} per prompt")
        if not prompts:
            return []

        unique = list(dict.fromkeys(image_index))  # images in order of first use; unused ones are skipped
        slot_of_image = {image: u for u, image in enumerate(unique)}
        split = [split_prompt_ids(self.tokenizer.encode(p, add_special_tokens=False), self.config) for p in prompts]
        leads = {tuple(lead) for lead, _ in split}
        if len(leads) > 1:
            raise ValueError("every prompt must start the same way before the image (build them with build_prompt)")
        low, high = self.processor.split(pixels[unique])
        features = self.model.encode_images(low.to(self.device))
        cross = self.model.encode_cross_images(high.to(self.device)) if high is not None else None  # CogAgent
        batch = layout_batch(self.model, [text for _, text in split], [slot_of_image[i] for i in image_index], [*leads.pop()])
        if settings.num_beams > 1:
            rows = beam_search(self.model, features, batch, settings.num_beams, settings.max_new_tokens, cross)
        else:
            rows = generate_rows(self.model, features, batch, settings, cross)
        return [self._to_generation(row) for row in rows]

    @torch.no_grad()
    def generate_videos(
        self,
        videos: Sequence[Video | np.ndarray],  # Videos, or float32 [T, 3, 224, 224] from model.video.preprocess_video
        prompts: list[str],  # already templated, one per output row
        video_index: list[int] | None = None,  # row r uses video video_index[r]; default r -> r
        template: str | None = None,  # the template of the prompts (default: the checkpoint's); chat adds time tokens
        settings: GenerationSettings = GenerationSettings(),
    ) -> list[Generation]:
        """One Generation per prompt, for a video checkpoint. Every used video goes through the vision
        tower once (all their frames in one batch), and each row gives what it would give alone."""
        if not self.config.is_video:
            raise ValueError(f"{self.describe()} is not a video checkpoint (CogVLMVideoForCausalLM)")
        if video_index is None:
            video_index = list(range(len(prompts)))
        if len(video_index) != len(prompts) or any(not 0 <= i < len(videos) for i in video_index):
            raise ValueError(f"video_index must give one video in 0..{len(videos) - 1} per prompt")
        if not prompts:
            return []
        template = template or self.template_version
        size = self.config.vision.image_size
        unique = list(dict.fromkeys(video_index))  # videos in order of first use; unused ones are skipped
        frames = []
        for i in unique:
            v = videos[i]
            pixels = torch.as_tensor(preprocess_video(v.frames) if isinstance(v, Video) else v)
            if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, size, size) or not len(pixels):
                raise ValueError(f"video {i} must be [T, 3, {size}, {size}] with T >= 1, got {tuple(pixels.shape)}")
            frames.append(pixels.to(self.device))
        features = self.model.encode_videos(frames)
        num_frames = [len(f) for f in frames]
        time_ids = None
        if uses_time_tokens(template):  # spec: the ordinal's own tokens (one each for 0..23 in Llama-3)
            time_ids = [self.tokenizer.encode(str(t), add_special_tokens=False) for t in range(max(num_frames))]
        slot = {video: u for u, video in enumerate(unique)}
        rows = [
            build_video_input_ids(self.tokenizer.encode(p, add_special_tokens=False), num_frames[slot[v]], self.config, time_ids)
            for p, v in zip(prompts, video_index)
        ]
        batch = layout_padded(self.model, rows, [slot[v] for v in video_index])
        if settings.num_beams > 1:
            out = beam_search(self.model, features, batch, settings.num_beams, settings.max_new_tokens)
        else:
            out = generate_rows(self.model, features, batch, settings)
        return [self._to_generation(row) for row in out]

    def _to_generation(self, row: RowResult) -> Generation:
        text = self.tokenizer.decode(row.token_ids, skip_special_tokens=True)
        if self.config.variant == GLM4V:  # spec: replies start with the empty assistant metadata line
            text = text.removeprefix("\n")
        return Generation(text=text, token_ids=row.token_ids, finish_reason=row.finish_reason)
