"""Key layout and variant detection, checked against the spec's formulas rather than our modules."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.config import CheckpointError, ModelConfig, detect_variant
from model.loading import check_checkpoint_dir, load_model
from model.architectures import build_model
from model.released_configs import RELEASED_CONFIGS


def spec_layout(raw: dict, variant: str) -> dict[str, tuple[int, ...]]:
    """Every key and shape the spec lists for a config.json."""
    if variant == "glm4v":
        return glm4v_layout(raw)
    h, i, vocab, layers = raw["hidden_size"], raw["intermediate_size"], raw["vocab_size"], raw["num_hidden_layers"]
    heads = raw["num_attention_heads"]
    kv = raw.get("num_multi_query_heads", 8) if variant == "cogvlm2" else heads
    qkv = h + 2 * kv * (h // heads)
    vc = raw["vision_config"]
    hv, iv, ps = vc["hidden_size"], vc["intermediate_size"], vc["patch_size"]
    keys = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,), "lm_head.weight": (vocab, h)}
    for n in range(layers):
        p = f"model.layers.{n}."
        keys[p + "input_layernorm.weight"] = (h,)
        keys[p + "post_attention_layernorm.weight"] = (h,)
        for expert in ("language", "vision"):
            keys[p + f"self_attn.{expert}_expert_query_key_value.weight"] = (qkv, h)
            keys[p + f"self_attn.{expert}_expert_dense.weight"] = (h, h)
            keys[p + f"mlp.{expert}_mlp.gate_proj.weight"] = (i, h)
            keys[p + f"mlp.{expert}_mlp.up_proj.weight"] = (i, h)
            keys[p + f"mlp.{expert}_mlp.down_proj.weight"] = (h, i)
        if variant == "cogvlm2":
            keys[p + "self_attn.vision_expert_query_key_value.bias"] = (qkv,)
    keys.update(vision_layout("model.vision.", vc, h, i, hv, (hv, hv) if variant == "cogvlm2" else None))
    if variant == "cogagent":
        keys.update(cogagent_additions(raw))
    return keys


def vision_layout(v: str, vc: dict, h: int, i: int, glu_in: int, conv: tuple[int, int] | None) -> dict:
    """EVA2-CLIP-E under prefix v; conv (out, in) for the 2x2 downsampling conv when there is one."""
    hv, iv, ps = vc["hidden_size"], vc["intermediate_size"], vc["patch_size"]
    keys = {}
    keys[v + "patch_embedding.proj.weight"] = (hv, 3, ps, ps)
    keys[v + "patch_embedding.proj.bias"] = (hv,)
    keys[v + "patch_embedding.cls_embedding"] = (1, hv)
    keys[v + "patch_embedding.position_embedding.weight"] = (vc["num_positions"], hv)
    for n in range(vc["num_hidden_layers"]):
        p = f"{v}transformer.layers.{n}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            keys[p + f"{norm}.weight"] = keys[p + f"{norm}.bias"] = (hv,)
        keys[p + "attention.query_key_value.weight"] = (3 * hv, hv)
        keys[p + "attention.query_key_value.bias"] = (3 * hv,)
        keys[p + "attention.dense.weight"], keys[p + "attention.dense.bias"] = (hv, hv), (hv,)
        keys[p + "mlp.fc1.weight"], keys[p + "mlp.fc1.bias"] = (iv, hv), (iv,)
        keys[p + "mlp.fc2.weight"], keys[p + "mlp.fc2.bias"] = (hv, iv), (hv,)
    a = v + "linear_proj."
    keys[a + "linear_proj.weight"] = (h, glu_in)
    keys[a + "norm1.weight"] = keys[a + "norm1.bias"] = (h,)
    keys[a + "gate_proj.weight"] = keys[a + "dense_h_to_4h.weight"] = (i, h)
    keys[a + "dense_4h_to_h.weight"] = (h, i)
    keys[v + "boi"] = keys[v + "eoi"] = (1, 1, h)
    if conv:
        keys[v + "conv.weight"], keys[v + "conv.bias"] = (conv[0], conv[1], 2, 2), (conv[0],)
    return keys


def cogagent_additions(raw: dict) -> dict:
    """shared/spec/cogagent.md: cross-attention per layer, the low-res pos_embed, the high-res tower."""
    h, layers = raw["hidden_size"], raw["num_hidden_layers"]
    c = raw.get("cross_compute_hidden_size", 1024)
    tower = raw.get("cross_vision_config", {})
    w, blocks, ps = tower.get("width", 1024), tower.get("layers", 24), tower.get("patch_size", 14)
    m, head = int(w * tower.get("mlp_ratio", 2.6667)), tower.get("embed_dim", 768)
    n = (raw.get("cross_image_size", 1120) // ps) ** 2
    vc = raw["vision_config"]
    keys = {"model.vision.pos_embed": ((vc["image_size"] // vc["patch_size"]) ** 2, vc["hidden_size"])}
    for layer in range(layers):
        p = f"model.layers.{layer}."
        keys[p + "post_cross_attention_layernorm.weight"] = (h,)
        keys[p + "cross_attn.query.weight"] = (c, h)
        keys[p + "cross_attn.key_value.weight"] = (2 * c, raw.get("cross_hidden_size", 1024))
        keys[p + "cross_attn.dense.weight"] = (h, c)
    x = "model.cross_vision.vit.model."
    keys[x + "patch_embed.proj.weight"], keys[x + "patch_embed.proj.bias"] = (w, 3, ps, ps), (w,)
    keys[x + "cls_token"], keys[x + "pos_embed"] = (1, 1, w), (1, n + 1, w)
    for b in range(blocks):
        p = f"{x}blocks.{b}."
        for norm in ("norm1", "norm2", "attn.inner_attn_ln"):
            keys[p + norm + ".weight"] = keys[p + norm + ".bias"] = (w,)
        for proj in ("q_proj", "k_proj", "v_proj"):
            keys[p + f"attn.{proj}.weight"] = (w, w)
        keys[p + "attn.q_bias"] = keys[p + "attn.v_bias"] = (w,)
        keys[p + "attn.proj.weight"], keys[p + "attn.proj.bias"] = (w, w), (w,)
        for up in ("w1", "w2"):
            keys[p + f"mlp.{up}.weight"], keys[p + f"mlp.{up}.bias"] = (m, w), (m,)
        keys[p + "mlp.ffn_ln.weight"] = keys[p + "mlp.ffn_ln.bias"] = (m,)
        keys[p + "mlp.w3.weight"], keys[p + "mlp.w3.bias"] = (w, m), (w,)
    keys[x + "norm.weight"] = keys[x + "norm.bias"] = (w,)
    keys[x + "head.weight"], keys[x + "head.bias"] = (head, w), (head,)
    keys["model.cross_vision.pos_embed"] = (n, w)
    return keys


def glm4v_layout(raw: dict) -> dict:
    """shared/spec/glm-4v.md: everything under transformer., no visual experts."""
    h, a, d, g = raw["hidden_size"], raw["num_attention_heads"], raw["kv_channels"], raw["multi_query_group_num"]
    f, v = raw["ffn_hidden_size"], raw["padded_vocab_size"]
    t = "transformer."
    keys = {t + "embedding.word_embeddings.weight": (v, h), t + "output_layer.weight": (v, h),
            t + "encoder.final_layernorm.weight": (h,)}
    for n in range(raw["num_layers"]):
        p = f"{t}encoder.layers.{n}."
        keys[p + "input_layernorm.weight"] = keys[p + "post_attention_layernorm.weight"] = (h,)
        keys[p + "self_attention.query_key_value.weight"] = ((a + 2 * g) * d, h)
        keys[p + "self_attention.query_key_value.bias"] = ((a + 2 * g) * d,)
        keys[p + "self_attention.dense.weight"] = (h, a * d)
        keys[p + "mlp.dense_h_to_4h.weight"], keys[p + "mlp.dense_4h_to_h.weight"] = (2 * f, h), (h, f)
    vc = raw["vision_config"]
    keys.update(vision_layout(t + "vision.", vc, h, f, h, (h, vc["hidden_size"])))
    return keys


def checkpoint_layout(model_dir) -> dict[str, tuple[int, ...]]:
    out = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        out.update({k: tuple(t.shape) for k, t in load_file(shard).items()})
    return out


def test_tiny_checkpoint_has_the_spec_layout(tiny_dir, variant):
    raw = json.loads((tiny_dir / "config.json").read_text())
    assert checkpoint_layout(tiny_dir) == spec_layout(raw, variant)
    index = json.loads((tiny_dir / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2


def released_variant(name: str) -> str:
    return next(v for prefix, v in (("cogvlm2", "cogvlm2"), ("cogagent", "cogagent"), ("glm-4v", "glm4v"), ("cogvlm", "cogvlm")) if name.startswith(prefix))


@pytest.mark.parametrize("name", sorted(RELEASED_CONFIGS))
def test_real_size_module_has_the_spec_layout(name):
    raw = RELEASED_CONFIGS[name]
    with torch.device("meta"):
        model = build_model(ModelConfig.from_dict(raw))
    assert {k: tuple(t.shape) for k, t in model.state_dict().items()} == spec_layout(raw, released_variant(name))


def test_cogagent_size_matches_the_published_index():
    """spec: total_size 36,585,351,552 = every tensor in bf16 + 32 inv_freq and the two high-res RoPE tables in fp32."""
    with torch.device("meta"):
        model = build_model(ModelConfig.from_dict(RELEASED_CONFIGS["cogagent-chat-hf"]))
    params = sum(t.numel() for t in model.state_dict().values())
    assert 2 * params + 4 * (32 * 64 + 2 * 6400 * 64) == 36_585_351_552
    assert round(params / 1e9, 2) == 18.29


def test_glm4v_parameter_count():
    with torch.device("meta"):
        model = build_model(ModelConfig.from_dict(RELEASED_CONFIGS["glm-4v-9b"]))
    assert round(sum(t.numel() for t in model.state_dict().values()) / 1e9, 1) == 13.9  # spec: about 13.9 B


@pytest.mark.parametrize("name", sorted(RELEASED_CONFIGS))
def test_variant_detection_on_released_configs(name):
    cfg = ModelConfig.from_dict(RELEASED_CONFIGS[name])
    if name.startswith("cogagent"):
        assert (cfg.variant, cfg.num_image_tokens, cfg.eos_token_ids, cfg.rope_base) == ("cogagent", 258, (2,), 10000.0)
        x = cfg.cross_vision
        assert (x.image_size, x.grid, x.width, x.layers, x.num_heads, x.mlp_hidden) == (1120, 80, 1024, 24, 16, 2730)
        assert cfg.cross_compute_hidden_size == 1024
    elif name.startswith("glm-4v"):
        assert (cfg.variant, cfg.num_image_tokens, cfg.num_kv_heads, cfg.head_dim, cfg.qkv_size) == ("glm4v", 1602, 2, 128, 4608)
        assert (cfg.eos_token_ids, cfg.pad_token_id, cfg.boi_token_id, cfg.eoi_token_id) == ((151329, 151336, 151338), 151329, 151339, 151340)
        assert (cfg.rope_base, cfg.vision_scaling, cfg.vocab_size, cfg.max_position_embeddings) == (10000.0, 8.0, 151552, 8192)
        assert cfg.rms_norm_eps == 1.5625e-07 and cfg.bos_token_id is None
    elif name.startswith("cogvlm2"):
        assert (cfg.variant, cfg.num_kv_heads, cfg.qkv_size, cfg.rope_base) == ("cogvlm2", 8, 6144, 500000.0)
        assert (cfg.num_image_tokens, cfg.eos_token_ids, cfg.pad_token_id) == (2306, (128001, 128009), 128002)
    else:
        assert (cfg.variant, cfg.num_kv_heads, cfg.qkv_size, cfg.rope_base) == ("cogvlm", 32, 3 * 4096, 10000.0)
        assert cfg.num_image_tokens == (258 if "224" in name else 1227)
        assert cfg.eos_token_ids == (2,)


def test_variant_detection_rule():
    v2 = RELEASED_CONFIGS["cogvlm2-llama3-chat-19B"]
    assert detect_variant(v2) == "cogvlm2"
    assert detect_variant({**v2, "vocab_size": 1000}) == "cogvlm2"  # bos 128000 alone is Llama-3
    assert detect_variant({"num_multi_query_heads": 2, "vocab_size": 260, "bos_token_id": 256}) == "cogvlm2"
    assert detect_variant(RELEASED_CONFIGS["cogvlm-chat-hf"]) == "cogvlm"
    agent = RELEASED_CONFIGS["cogagent-chat-hf"]
    assert detect_variant(agent) == "cogagent"
    assert detect_variant({k: v for k, v in agent.items() if not k.startswith("cross_")}) == "cogagent"  # by its class
    glm = RELEASED_CONFIGS["glm-4v-9b"]
    assert detect_variant(glm) == "glm4v"
    with pytest.raises(CheckpointError, match="text-only GLM"):  # spec: glm-4-9b-chat shares model_type chatglm
        detect_variant({k: v for k, v in glm.items() if k not in ("vision_config", "boi_token_id")})


def test_cogagent_cross_sizes_must_agree():
    agent = RELEASED_CONFIGS["cogagent-chat-hf"]
    with pytest.raises(CheckpointError, match="cross tower width"):
        ModelConfig.from_dict({**agent, "cross_compute_hidden_size": 512})
    with pytest.raises(CheckpointError, match="unknown keys"):
        ModelConfig.from_dict({**agent, "cross_vision_config": {"depth": 3}})


def test_glm4v_block_options_are_checked():
    glm = RELEASED_CONFIGS["glm-4v-9b"]
    with pytest.raises(CheckpointError, match="add_qkv_bias"):
        ModelConfig.from_dict({**glm, "add_qkv_bias": False})
    with pytest.raises(CheckpointError, match="add_qkv_bias False"):  # absent: the config class's default, False
        ModelConfig.from_dict({k: v for k, v in glm.items() if k != "add_qkv_bias"})
    # spec: absent keys take ChatGLMConfig's defaults (seq_length 2048, one key/value group, rope_ratio 1)
    cfg = ModelConfig.from_dict({k: v for k, v in glm.items() if k not in ("seq_length", "multi_query_group_num")})
    assert (cfg.max_position_embeddings, cfg.num_kv_heads, cfg.rope_base) == (2048, 1, 10000.0)


def test_tiny_configs_detect_as_their_variant(tiny_dir, variant):
    assert ModelConfig.from_json(tiny_dir).variant == variant


def rewrite_weights(src, dst, edit):
    """Copy a checkpoint with its tensors merged, edited, and saved as one model.safetensors."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    tensors = {}
    for shard in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(shard))
    edit(tensors)
    save_file(tensors, dst / "model.safetensors")
    return dst


def refusal(model_dir) -> str:
    """The error both the quick check and the loader give for a directory, which must agree."""
    with pytest.raises(CheckpointError) as quick:
        check_checkpoint_dir(model_dir)
    with pytest.raises(CheckpointError) as full:
        load_model(model_dir, "cpu", torch.float32)
    assert str(quick.value) == str(full.value)
    return str(full.value)


# a language-model key and the vision prefix of each variant
GATE = {"glm4v": "transformer.encoder.layers.0.mlp.dense_h_to_4h.weight"}
VISION = {"glm4v": "transformer.vision."}


def test_renamed_key_names_both_keys(tiny_dir, tmp_path, variant):
    gate = GATE.get(variant, "model.layers.0.mlp.language_mlp.gate_proj.weight")

    def rename(t):
        t[gate + "_renamed"] = t.pop(gate)

    message = refusal(rewrite_weights(tiny_dir, tmp_path / "ckpt", rename))
    assert f"missing keys (1): {gate}" in message
    assert f"unexpected keys (1): {gate}_renamed" in message


def test_missing_key_is_named(tiny_dir, tmp_path, variant):
    name = VISION.get(variant, "model.vision.") + "linear_proj.norm1.bias"
    message = refusal(rewrite_weights(tiny_dir, tmp_path / "ckpt", lambda t: t.pop(name)))
    assert f"missing keys (1): {name}" in message and "unexpected" not in message


def test_unexpected_key_is_named(tiny_dir, tmp_path):
    extra = {"model.vision.extra": torch.zeros(2)}
    message = refusal(rewrite_weights(tiny_dir, tmp_path / "ckpt", lambda t: t.update(extra)))
    assert "unexpected keys (1): model.vision.extra" in message and "missing" not in message


def test_wrong_shape_is_named(tiny_dir, tmp_path, variant):
    boi = VISION.get(variant, "model.vision.") + "boi"

    def grow(t):
        t[boi] = torch.zeros(1, 1, t[boi].shape[-1] + 1)

    message = refusal(rewrite_weights(tiny_dir, tmp_path / "ckpt", grow))
    assert f"wrong shapes (1): {boi}: checkpoint [1, 1, 65], expected [1, 1, 64]" in message


def test_quick_check_accepts_a_good_checkpoint(tiny_dir, variant):
    assert check_checkpoint_dir(tiny_dir).variant == variant


def test_rotary_inv_freq_is_ignored(tiny_dir, tmp_path):
    extra = {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}
    ok = rewrite_weights(tiny_dir, tmp_path / "ckpt", lambda t: t.update(extra))
    load_model(ok, "cpu", torch.float32)


def test_stored_deterministic_buffers_are_ignored(tmp_path):
    """spec: CogAgent's file stores the high-res RoPE tables once; GLM-4V may store rotary_pos_emb.inv_freq."""
    from model.tiny import write_tiny_checkpoint

    for variant, extra in (
        ("cogagent", {"model.cross_vision.vit.model.rope.freqs_cos": torch.ones(36, 16),
                      "model.cross_vision.vit.model.rope.freqs_sin": torch.ones(36, 16)}),
        ("glm4v", {"transformer.rotary_pos_emb.inv_freq": torch.ones(4)}),
    ):
        src = write_tiny_checkpoint(tmp_path / variant, variant)
        load_model(rewrite_weights(src, tmp_path / f"{variant}-extra", lambda t: t.update(extra)), "cpu", torch.float32)
