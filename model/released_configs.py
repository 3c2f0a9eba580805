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

# spec (cogagent.md): CogVLM v1's fields at 224 px plus the three cross_* keys
_COGAGENT_CHAT = {
    **_COGVLM_CHAT,
    "architectures": ["CogAgentForCausalLM"],
    "cross_compute_hidden_size": 1024,
    "cross_hidden_size": 1024,
    "cross_image_size": 1120,
    "template_version": "chat",
    "transformers_version": "4.36.0.dev0",
    "vision_config": _vision(224),
}
RELEASED_CONFIGS["cogagent-chat-hf"] = _COGAGENT_CHAT
# spec: cogagent-vqa-hf's template_version is not confirmed (THUDM's training README pairs it with
# chat_old); a real file's value wins, this copy is only for layout checks and benchmarks
RELEASED_CONFIGS["cogagent-vqa-hf"] = {**_COGAGENT_CHAT, "template_version": "chat_old"}

# spec (glm-4v.md): the config.json table, ChatGLM field names
RELEASED_CONFIGS["glm-4v-9b"] = {
    "architectures": ["ChatGLMModel"],
    "model_type": "chatglm",
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "apply_query_key_layer_scaling": True,
    "apply_residual_connection_post_layernorm": False,
    "attention_dropout": 0.0,
    "attention_softmax_in_fp32": True,
    "attn_implementation": "sdpa",
    "bias_dropout_fusion": True,
    "boi_token_id": 151339,
    "eoi_token_id": 151340,
    "eos_token_id": [151329, 151336, 151338],
    "ffn_hidden_size": 13696,
    "fp32_residual_connection": False,
    "hidden_dropout": 0.0,
    "hidden_size": 4096,
    "kv_channels": 128,
    "layernorm_epsilon": 1.5625e-07,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "num_attention_heads": 32,
    "num_layers": 40,
    "original_rope": True,
    "pad_token_id": 151329,
    "padded_vocab_size": 151552,
    "post_layer_norm": True,
    "rmsnorm": True,
    "seq_length": 8192,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vision_config": {**_vision(1120), "scaling_factor": 8},
}

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
