"""config.json of a CogVLM-family checkpoint -> ModelConfig, and which variant it is.

Variants: CogVLM (v1), CogVLM2, CogAgent (v1 plus a high-res cross tower), GLM-4V (GLM-4 backbone,
its own key names and config fields; shared/spec/glm-4v.md).

No torch here: CPU-only pipeline stages read the config (image size, template) through this.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

COGVLM, COGVLM2 = "cogvlm", "cogvlm2"
COGVLM2_VIDEO = "cogvlm2-video"  # CogVLM2-Video chat/base and cogvlm2-llama3-caption
COGAGENT, GLM4V = "cogagent", "glm4v"
LLAMA3_VARIANTS = (COGVLM2, COGVLM2_VIDEO)
IMAGE_ARCHITECTURE, VIDEO_ARCHITECTURE = "CogVLMForCausalLM", "CogVLMVideoForCausalLM"
VIDEO_IMAGE_SIZE, VIDEO_PATCH_SIZE = 224, 14
# How the RoPE tables are built (CogVLMForCausalLM.init_rope): as the official code does with its
# module in the weights' dtype (the default), as the official Hugging Face demos load it, or exact
# fp32. A run-time choice, not a checkpoint fact (README "RoPE numerics").
ROPE_PRECISIONS = ("official", "hf", "fp32")
LLAMA3_VOCAB_SIZE, LLAMA3_BOS = 128256, 128000
# the prompt templates each variant has (spec: cogagent.md "Prompts"; GLM-4V has its chat template only)
TEMPLATES_BY_VARIANT = {
    COGVLM: ("base", "chat", "vqa"),
    COGVLM2: ("base", "chat", "vqa"),
    COGVLM2_VIDEO: ("base", "chat", "vqa"),
    COGAGENT: ("base", "chat", "vqa", "chat_old"),
    GLM4V: ("chat",),
}
# spec (cogagent.md): the high-res tower's sizes are hard-coded in the official code (EVA02-CLIP-L);
# a `cross_vision_config` object in config.json (project convention for tiny checkpoints) overrides them
CROSS_VISION_DEFAULTS = {
    "width": 1024, "layers": 24, "head_width": 64, "mlp_ratio": 2.6667, "patch_size": 14,
    "embed_dim": 768, "pt_hw_seq_len": 16, "layer_norm_eps": 1e-6,
}


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
class CrossVisionConfig:
    """CogAgent's high-resolution tower (EVA02-CLIP-L layout)."""

    image_size: int
    width: int
    layers: int
    head_width: int
    mlp_ratio: float
    patch_size: int
    embed_dim: int  # the unused output head
    pt_hw_seq_len: int  # the 2-D RoPE's pre-training grid
    layer_norm_eps: float

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_heads(self) -> int:
        return self.width // self.head_width

    @property
    def mlp_hidden(self) -> int:
        return int(self.width * self.mlp_ratio)  # spec: int(1024 * 2.6667) = 2730


@dataclass(frozen=True)
class ModelConfig:
    variant: str  # COGVLM, COGVLM2, COGVLM2_VIDEO, COGAGENT or GLM4V, from detect_variant
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
    cross_vision: CrossVisionConfig | None = None  # CogAgent only
    cross_compute_hidden_size: int = 0  # CogAgent: width of the cross-attention (C)
    kv_channels: int | None = None  # GLM-4V: head dim as given; else hidden / heads
    boi_token_id: int | None = None  # GLM-4V: the image placeholder is boi, pad, eoi
    eoi_token_id: int | None = None
    vision_scaling: float = 1.0  # GLM-4V: image tokens are divided by scaling_factor
    rope_ratio: float = 1.0  # GLM-4V: RoPE base 10000 * rope_ratio

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def qkv_size(self) -> int:  # fused q, k, v rows
        return (self.num_attention_heads + 2 * self.num_kv_heads) * self.head_dim

    @property
    def rope_base(self) -> float:
        if self.variant == GLM4V:
            return 10000.0 * self.rope_ratio  # spec (glm-4v.md): rope_ratio defaults to 1
        return 500000.0 if self.variant in LLAMA3_VARIANTS else 10000.0  # spec: RoPE base

    @property
    def downsample(self) -> bool:  # spec: v2's (and GLM-4V's) 2x2 stride-2 conv over the patch grid
        return self.variant in LLAMA3_VARIANTS + (GLM4V,)

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
            if variant == GLM4V:
                cfg = _glm4v_config(raw, vision)
                cfg._validate(raw)
                return cfg
            cross = {}
            if variant == COGAGENT:
                # spec (cogagent.md): config-class defaults when a key is absent
                overrides = raw.get("cross_vision_config", {})
                unknown = sorted(set(overrides) - set(CROSS_VISION_DEFAULTS))
                if unknown:
                    raise CheckpointError(f"cross_vision_config has unknown keys {unknown}")
                tower = {**CROSS_VISION_DEFAULTS, **overrides}
                cross = {
                    "cross_vision": CrossVisionConfig(image_size=raw.get("cross_image_size", 1120), **tower),
                    "cross_compute_hidden_size": raw.get("cross_compute_hidden_size", 1024),
                }
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
                **cross,
            )
        except KeyError as e:
            raise CheckpointError(f"config.json lacks the field {e.args[0]!r}") from None
        cfg._validate(raw)
        return cfg

    @classmethod
    def from_json(cls, model_dir: str | Path) -> "ModelConfig":
        return cls.from_dict(read_config_json(model_dir))

    def _validate(self, raw: dict) -> None:
        problems = _check_glm4v(raw) if self.variant == GLM4V else []
        if raw.get("hidden_act", "silu") != "silu" and self.variant != GLM4V:
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
        if self.template_version not in TEMPLATES_BY_VARIANT.get(self.variant, TEMPLATES_BY_VARIANT[COGVLM]):
            problems.append(f"template_version {self.template_version!r}")
        x = self.cross_vision
        if x is not None:
            if x.image_size % x.patch_size or x.width % x.head_width or x.head_width % 4:
                problems.append(f"cross tower: image {x.image_size}, patch {x.patch_size}, width {x.width}, head {x.head_width}")
            # spec: cross_hidden_size equals the tower width; the official code needs compute == hidden
            if raw.get("cross_hidden_size", x.width) != x.width or self.cross_compute_hidden_size != x.width:
                problems.append(
                    f"cross_hidden_size {raw.get('cross_hidden_size')} / cross_compute_hidden_size "
                    f"{self.cross_compute_hidden_size} must both equal the cross tower width {x.width}"
                )
            if self.cross_compute_hidden_size % self.num_attention_heads:
                problems.append("cross_compute_hidden_size must divide by num_attention_heads")
        if problems:
            raise CheckpointError("unsupported config.json: " + "; ".join(problems))


# spec (glm-4v.md): ChatGLMConfig's defaults, what the official code uses for a key config.json lacks
GLM4V_DEFAULTS = {
    "num_layers": 28, "padded_vocab_size": 65024, "hidden_size": 4096, "ffn_hidden_size": 13696, "kv_channels": 128,
    "num_attention_heads": 32, "seq_length": 2048, "layernorm_epsilon": 1e-5, "multi_query_attention": False,
    "multi_query_group_num": 1, "rope_ratio": 1, "add_qkv_bias": False, "add_bias_linear": False, "rmsnorm": True,
    "post_layer_norm": True, "apply_residual_connection_post_layernorm": False, "original_rope": True,
}


def _glm4v_config(raw: dict, vision: VisionConfig) -> ModelConfig:
    """GLM-4V's config.json names its fields the ChatGLM way (spec: glm-4v.md)."""
    raw = {**GLM4V_DEFAULTS, **raw}
    eos = raw.get("eos_token_id", [151329, 151336, 151338])
    heads = raw["num_attention_heads"]
    return ModelConfig(
        variant=GLM4V,
        vocab_size=raw["padded_vocab_size"],  # spec: vocab_size = padded_vocab_size; padding rows are kept
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["ffn_hidden_size"],
        num_hidden_layers=raw["num_layers"],
        num_attention_heads=heads,
        num_kv_heads=raw["multi_query_group_num"] if raw["multi_query_attention"] else heads,
        max_position_embeddings=raw["seq_length"],
        rms_norm_eps=raw["layernorm_epsilon"],
        bos_token_id=None,  # GLM-4 has no bos: the template starts with [gMASK]<sop>
        eos_token_ids=tuple(eos) if isinstance(eos, list) else (eos,),
        pad_token_id=raw.get("pad_token_id", 151329),
        template_version="chat",
        vision=vision,
        kv_channels=raw["kv_channels"],
        boi_token_id=raw["boi_token_id"],
        eoi_token_id=raw["eoi_token_id"],
        vision_scaling=float(raw["vision_config"].get("scaling_factor", 8)),
        rope_ratio=float(raw["rope_ratio"]),
    )


def _check_glm4v(raw: dict) -> list[str]:
    """The GLM-4V block options our code implements (spec: glm-4v.md config table); an absent key
    means ChatGLMConfig's default, as in the official code."""
    expected = {"add_qkv_bias": True, "add_bias_linear": False, "rmsnorm": True, "post_layer_norm": True,
                "apply_residual_connection_post_layernorm": False, "original_rope": True}
    problems = [f"{k} {raw.get(k, GLM4V_DEFAULTS[k])!r} (expected {v!r})"
                for k, v in expected.items() if raw.get(k, GLM4V_DEFAULTS[k]) != v]
    if raw.get("pre_seq_len"):
        problems.append("pre_seq_len (p-tuning prefixes are not supported)")
    return problems


def detect_variant(raw: dict) -> str:
    """CogVLM2-Video iff `architectures` names CogVLMVideoForCausalLM; GLM-4V iff the ChatGLM
    config has a vision tower and an image-begin token (spec: glm-4v.md); CogAgent iff it names the
    cross tower (its config keys or class); else CogVLM2 iff the config is for the Llama-3 backbone.

    The released cogvlm2 config.json says so only through Llama-3's vocabulary (vocab_size 128256,
    bos 128000): it omits `num_multi_query_heads`. A config that names `num_multi_query_heads`
    (the v2 config class field; tiny test checkpoints use it) is v2 as well. Anything else is v1.
    """
    if VIDEO_ARCHITECTURE in (raw.get("architectures") or ()):
        return COGVLM2_VIDEO  # spec (cogvlm2-video): told apart by its class name, never by a flag
    if raw.get("model_type") == "chatglm" or "padded_vocab_size" in raw:
        if "vision_config" in raw and "boi_token_id" in raw:
            return GLM4V
        raise CheckpointError("a ChatGLM config without vision_config/boi_token_id is a text-only GLM, not GLM-4V")
    if "CogAgentForCausalLM" in raw.get("architectures", []) or any(k.startswith("cross_") for k in raw):
        return COGAGENT
    if "num_multi_query_heads" in raw:
        return COGVLM2
    if raw.get("vocab_size") == LLAMA3_VOCAB_SIZE or raw.get("bos_token_id") == LLAMA3_BOS:
        return COGVLM2
    return COGVLM


def read_json_object(path: Path) -> dict:
    """A checkpoint's JSON file that must hold an object; errors name the file."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return raw


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
    raw = read_json_object(path)
    architectures = raw.get("architectures", [IMAGE_ARCHITECTURE])
    # spec: GLM-4V says ChatGLMModel (misleading, but that is its file); CogAgent says CogAgentForCausalLM
    known = (IMAGE_ARCHITECTURE, VIDEO_ARCHITECTURE, "CogAgentForCausalLM", "ChatGLMModel", "ChatGLMForConditionalGeneration")
    if not any(a in known for a in architectures):
        raise CheckpointError(
            f"{path} describes {architectures}, not a CogVLM-family model "
            "(CogVLM / CogVLM2 chat, base, grounding; CogVLM2-Video, cogvlm2-llama3-caption; CogAgent; GLM-4V)"
        )
    return raw
