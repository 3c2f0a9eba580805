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
from model.model import CogVLMForCausalLM
from model.released_configs import RELEASED_CONFIGS


def spec_layout(raw: dict, variant: str) -> dict[str, tuple[int, ...]]:
    """Every key and shape the spec lists for a config.json."""
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
    v = "model.vision."
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
    keys[a + "linear_proj.weight"] = (h, hv)
    keys[a + "norm1.weight"] = keys[a + "norm1.bias"] = (h,)
    keys[a + "gate_proj.weight"] = keys[a + "dense_h_to_4h.weight"] = (i, h)
    keys[a + "dense_4h_to_h.weight"] = (h, i)
    keys[v + "boi"] = keys[v + "eoi"] = (1, 1, h)
    if variant == "cogvlm2":
        keys[v + "conv.weight"], keys[v + "conv.bias"] = (hv, hv, 2, 2), (hv,)
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


@pytest.mark.parametrize("name", sorted(RELEASED_CONFIGS))
def test_real_size_module_has_the_spec_layout(name):
    raw = RELEASED_CONFIGS[name]
    variant = "cogvlm2" if name.startswith("cogvlm2") else "cogvlm"
    with torch.device("meta"):
        model = CogVLMForCausalLM(ModelConfig.from_dict(raw))
    assert {k: tuple(t.shape) for k, t in model.state_dict().items()} == spec_layout(raw, variant)


@pytest.mark.parametrize("name", sorted(RELEASED_CONFIGS))
def test_variant_detection_on_released_configs(name):
    cfg = ModelConfig.from_dict(RELEASED_CONFIGS[name])
    if name.startswith("cogvlm2"):
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


GATE = "model.layers.0.mlp.language_mlp.gate_proj.weight"


def test_renamed_key_names_both_keys(tiny_dir, tmp_path):
    def rename(t):
        t[GATE + "_renamed"] = t.pop(GATE)

    message = refusal(rewrite_weights(tiny_dir, tmp_path / "ckpt", rename))
    assert f"missing keys (1): {GATE}" in message
    assert f"unexpected keys (1): {GATE}_renamed" in message


def test_missing_key_is_named(tiny_dir, tmp_path):
    name = "model.vision.linear_proj.norm1.bias"
    message = refusal(rewrite_weights(tiny_dir, tmp_path / "ckpt", lambda t: t.pop(name)))
    assert f"missing keys (1): {name}" in message and "unexpected" not in message


def test_unexpected_key_is_named(tiny_dir, tmp_path):
    extra = {"model.vision.extra": torch.zeros(2)}
    message = refusal(rewrite_weights(tiny_dir, tmp_path / "ckpt", lambda t: t.update(extra)))
    assert "unexpected keys (1): model.vision.extra" in message and "missing" not in message


def test_wrong_shape_is_named(tiny_dir, tmp_path):
    def grow(t):
        t["model.vision.boi"] = torch.zeros(1, 1, t["model.vision.boi"].shape[-1] + 1)

    message = refusal(rewrite_weights(tiny_dir, tmp_path / "ckpt", grow))
    assert "wrong shapes (1): model.vision.boi: checkpoint [1, 1, 65], expected [1, 1, 64]" in message


def test_quick_check_accepts_a_good_checkpoint(tiny_dir, variant):
    assert check_checkpoint_dir(tiny_dir).variant == variant


def test_rotary_inv_freq_is_ignored(tiny_dir, tmp_path):
    extra = {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}
    ok = rewrite_weights(tiny_dir, tmp_path / "ckpt", lambda t: t.update(extra))
    load_model(ok, "cpu", torch.float32)
