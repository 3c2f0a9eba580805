"""The config.json contents of the released checkpoints (spec; the cogvlm2 one as published,
without num_multi_query_heads). Used to check variant detection and to build real-size models
with random weights for benchmarks, without any checkpoint on disk."""

from __future__ import annotations

_EVA2_CLIP_E = {
    "dropout_prob": 0.0,
    "hidden_act": "gelu",
    "hidden_size": 1792,
    "in_channels": 3,
    "intermediate_size": 15360,
    "layer_norm_eps": 1e-06,
    "num_heads": 16,
    "num_hidden_layers": 63,
    "patch_size": 14,
}


def _vision(image_size: int) -> dict:
    return {**_EVA2_CLIP_E, "image_size": image_size, "num_positions": (image_size // 14) ** 2 + 1}


_COGVLM_CHAT = {
    "architectures": ["CogVLMForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 2048,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "pad_token_id": 0,
    "rms_norm_eps": 1e-05,
    "template_version": "chat",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vision_config": _vision(490),
    "vocab_size": 32000,
}

RELEASED_CONFIGS: dict[str, dict] = {
    "cogvlm-chat-hf": _COGVLM_CHAT,
    "cogvlm-base-490-hf": {**_COGVLM_CHAT, "template_version": "base"},
    "cogvlm-base-224-hf": {**_COGVLM_CHAT, "template_version": "base", "vision_config": _vision(224)},
    "cogvlm-grounding-generalist-hf": {**_COGVLM_CHAT, "template_version": "base"},
    "cogvlm2-llama3-chat-19B": {
        "architectures": ["CogVLMForCausalLM"],
        "vision_config": _vision(1344),
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-05,
        "template_version": "chat",
        "initializer_range": 0.02,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128009],
        "pad_token_id": 128002,
        "vocab_size": 128256,
        "num_hidden_layers": 32,
        "hidden_act": "silu",
        "use_cache": True,
    },
}
RELEASED_CONFIGS["cogvlm2-llama3-chinese-chat-19B"] = RELEASED_CONFIGS["cogvlm2-llama3-chat-19B"]

# spec (cogvlm2-video): cogvlm2-llama3-caption's config.json (confirmed); the chat and base
# checkpoints are taken to be the same but for template_version. Apart from RELEASED_CONFIGS,
# which holds the visual-expert (image) checkpoints.
VIDEO_RELEASED_CONFIGS: dict[str, dict] = {
    "cogvlm2-llama3-caption": {
        "architectures": ["CogVLMVideoForCausalLM"],
        "auto_map": {"AutoModelForCausalLM": "modeling_cogvlm.CogVLMVideoForCausalLM"},
        "vision_config": _vision(224),
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_multi_query_heads": 8,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-05,
        "template_version": "base",
        "initializer_range": 0.02,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "pad_token_id": 128002,
        "vocab_size": 128256,
        "num_hidden_layers": 32,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.43.1",
        "use_cache": True,
    },
}
VIDEO_RELEASED_CONFIGS["cogvlm2-video-llama3-chat"] = {**VIDEO_RELEASED_CONFIGS["cogvlm2-llama3-caption"], "template_version": "chat"}
VIDEO_RELEASED_CONFIGS["cogvlm2-video-llama3-base"] = VIDEO_RELEASED_CONFIGS["cogvlm2-llama3-caption"]
