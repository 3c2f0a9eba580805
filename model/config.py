"""config.json of a CogVLM / CogVLM2 checkpoint -> ModelConfig, and which variant it is.

No torch here: CPU-only pipeline stages read the config (image size, template) through this.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

COGVLM, COGVLM2 = "cogvlm", "cogvlm2"
COGVLM2_VIDEO = "cogvlm2-video"  # CogVLM2-Video chat/base and cogvlm2-llama3-caption
LLAMA3_VARIANTS = (COGVLM2, COGVLM2_VIDEO)
IMAGE_ARCHITECTURE, VIDEO_ARCHITECTURE = "CogVLMForCausalLM", "CogVLMVideoForCausalLM"
VIDEO_IMAGE_SIZE, VIDEO_PATCH_SIZE = 224, 14
# How the RoPE tables are built (CogVLMForCausalLM.init_rope): as the official code does with its
# module in the weights' dtype (the default), as the official Hugging Face demos load it, or exact
# fp32. A run-time choice, not a checkpoint fact (README "RoPE numerics").
ROPE_PRECISIONS = ("official", "hf", "fp32")
LLAMA3_VOCAB_SIZE, LLAMA3_BOS = 128256, 128000


class CheckpointError(ValueError):
    """A model or tokenizer directory that cannot be used as given; the message says what to fix."""


@dataclass(frozen=True)
class VisionConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_heads: int
    patch_size: int
    image_size: int
    num_positions: int
    in_channels: int = 3
    layer_norm_eps: float = 1e-6

    @property
    def grid(self) -> int:  # patches per side
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class ModelConfig:
    variant: str  # COGVLM, COGVLM2 or COGVLM2_VIDEO, from detect_variant
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_kv_heads: int
    max_position_embeddings: int
    rms_norm_eps: float
    bos_token_id: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    template_version: str
    vision: VisionConfig

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def qkv_size(self) -> int:  # fused q, k, v rows
        return (self.num_attention_heads + 2 * self.num_kv_heads) * self.head_dim

    @property
    def rope_base(self) -> float:
        return 500000.0 if self.variant in LLAMA3_VARIANTS else 10000.0  # spec: RoPE base

    @property
    def downsample(self) -> bool:  # spec: v2's 2x2 stride-2 conv over the patch grid
        return self.variant in LLAMA3_VARIANTS

    @property
    def rope_positions(self) -> int:  # rows of the RoPE table: the position ids generation may reach
        # spec (cogvlm2-video): max_position_embeddings 2048 is not enforced there; the caption tool lets
        # 2048 new tokens follow a prompt whose positions reach ~110 (chat) and the text can be long
        return 4 * self.max_position_embeddings if self.is_video else self.max_position_embeddings

    @property
    def visual_expert(self) -> bool:  # spec (cogvlm2-video): no visual expert in any video checkpoint
        return self.variant != COGVLM2_VIDEO

    @property
    def is_video(self) -> bool:
        return self.variant == COGVLM2_VIDEO

    @property
    def num_image_tokens(self) -> int:  # boi + patches + eoi
        side = self.vision.grid // 2 if self.downsample else self.vision.grid
        return side * side + 2

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelConfig":
        variant = detect_variant(raw)
        v2 = variant in LLAMA3_VARIANTS
        try:
            vraw = raw["vision_config"]
            vision = VisionConfig(
                hidden_size=vraw["hidden_size"],
                intermediate_size=vraw["intermediate_size"],
                num_hidden_layers=vraw["num_hidden_layers"],
                num_heads=vraw["num_heads"],
                patch_size=vraw["patch_size"],
                image_size=vraw["image_size"],
                num_positions=vraw["num_positions"],
                in_channels=vraw.get("in_channels", 3),
                layer_norm_eps=vraw.get("layer_norm_eps", 1e-6),
            )
            # spec (cogvlm2-video): the video checkpoints stop at the single id 128001
            eos = raw.get("eos_token_id", (128001 if variant == COGVLM2_VIDEO else [128001, 128009]) if v2 else 2)
            cfg = cls(
                variant=variant,
                vocab_size=raw["vocab_size"],
                hidden_size=raw["hidden_size"],
                intermediate_size=raw["intermediate_size"],
                num_hidden_layers=raw["num_hidden_layers"],
                num_attention_heads=raw["num_attention_heads"],
                # spec: absent from v2's config.json, the config class defaults it to 8
                num_kv_heads=raw.get("num_multi_query_heads", 8) if v2 else raw["num_attention_heads"],
                max_position_embeddings=raw.get("max_position_embeddings", 8192 if variant == COGVLM2 else 2048),
                rms_norm_eps=raw.get("rms_norm_eps", 1e-5),
                bos_token_id=raw.get("bos_token_id", LLAMA3_BOS if v2 else 1),
                eos_token_ids=tuple(eos) if isinstance(eos, list) else (eos,),
                pad_token_id=raw.get("pad_token_id", 128002 if v2 else 0),
                template_version=raw.get("template_version", "chat"),
                vision=vision,
            )
        except KeyError as e:
            raise CheckpointError(f"config.json lacks the field {e.args[0]!r}") from None
        cfg._validate(raw)
        return cfg

    @classmethod
    def from_json(cls, model_dir: str | Path) -> "ModelConfig":
        return cls.from_dict(read_config_json(model_dir))

    def _validate(self, raw: dict) -> None:
        problems = []
        if raw.get("hidden_act", "silu") != "silu":
            problems.append(f"hidden_act {raw['hidden_act']!r} (expected 'silu')")
        if raw["vision_config"].get("hidden_act", "gelu") != "gelu":
            problems.append(f"vision hidden_act {raw['vision_config']['hidden_act']!r} (expected 'gelu')")
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_kv_heads:
            problems.append("hidden_size / num_attention_heads / num_multi_query_heads do not divide")
        v = self.vision
        if v.image_size % v.patch_size or v.num_positions != v.grid * v.grid + 1:
            problems.append(
                f"vision image_size {v.image_size}, patch_size {v.patch_size} and num_positions "
                f"{v.num_positions} disagree (need num_positions = (image_size/patch_size)^2 + 1)"
            )
        if self.downsample and v.grid % 2:
            problems.append(f"the 2x2 stride-2 conv needs an even patch grid, got {v.grid}")
        if self.is_video and (v.image_size, v.patch_size) != (VIDEO_IMAGE_SIZE, VIDEO_PATCH_SIZE):
            # spec (cogvlm2-video): the official code hard-codes 64 + 2 slots per frame
            problems.append(
                f"a video checkpoint needs vision image_size {VIDEO_IMAGE_SIZE} and patch_size {VIDEO_PATCH_SIZE} "
                f"(64 + 2 tokens per frame), got {v.image_size} and {v.patch_size}"
            )
        if self.template_version not in ("base", "chat", "vqa"):
            problems.append(f"template_version {self.template_version!r}")
        if problems:
            raise CheckpointError("unsupported config.json: " + "; ".join(problems))


def detect_variant(raw: dict) -> str:
    """CogVLM2-Video iff `architectures` names CogVLMVideoForCausalLM; else CogVLM2 iff the config
    is for the Llama-3 backbone.

    The released cogvlm2 config.json says so only through Llama-3's vocabulary (vocab_size 128256,
    bos 128000): it omits `num_multi_query_heads`. A config that names `num_multi_query_heads`
    (the v2 config class field; tiny test checkpoints use it) is v2 as well. Anything else is v1.
    """
    if VIDEO_ARCHITECTURE in (raw.get("architectures") or ()):
        return COGVLM2_VIDEO  # spec (cogvlm2-video): told apart by its class name, never by a flag
    if "num_multi_query_heads" in raw:
        return COGVLM2
    if raw.get("vocab_size") == LLAMA3_VOCAB_SIZE or raw.get("bos_token_id") == LLAMA3_BOS:
        return COGVLM2
    return COGVLM


def read_config_json(model_dir: str | Path) -> dict:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"model directory {model_dir} does not exist or is not a directory")
    path = model_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{model_dir} has no config.json: point at the directory of a CogVLM / CogVLM2 "
            "Hugging Face checkpoint (config.json + *.safetensors)"
        )
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    architectures = raw.get("architectures", [IMAGE_ARCHITECTURE])
    if IMAGE_ARCHITECTURE not in architectures and VIDEO_ARCHITECTURE not in architectures:
        raise CheckpointError(
            f"{path} describes {architectures}, not CogVLMForCausalLM (CogVLM / CogVLM2 chat, base, grounding) "
            "or CogVLMVideoForCausalLM (CogVLM2-Video, cogvlm2-llama3-caption)"
        )
    return raw
