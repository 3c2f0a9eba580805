"""RoPE tables: "official" (bf16 inv_freq, bf16 positions, bf16 angles, as the official code builds them with its
module in bf16), "hf" (fp32 positions, bf16-rounded inv_freq, as its Hugging Face demos load it) and "fp32"
(exact), each against tables computed here in numpy; and through the loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.api import VisualExpertModel
from model.config import GLM4V, ModelConfig
from model.model import CogVLMForCausalLM
from model.released_configs import RELEASED_CONFIGS

REAL = {"v1": "cogvlm-chat-hf", "v2": "cogvlm2-llama3-chat-19B"}  # base 10000 / 500000, head dim 128


def bf16(x) -> np.ndarray:
    """Round float32 values to the nearest bfloat16 (ties to even), returned as float32."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return bits.astype(np.uint32).view(np.float32)


def reference_angles(base: float, dim: int, positions: int, rounded: str) -> np.ndarray:
    """[positions, dim/2] angles. rounded "all": inv_freq, positions and each product rounded to bf16;
    "inv_freq": only inv_freq; "none": exact."""
    inv_freq = (1.0 / base ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))).astype(np.float32)
    t = np.arange(positions, dtype=np.float32)
    if rounded == "all":
        return bf16(np.outer(bf16(t), bf16(inv_freq)))  # a bf16 x bf16 product is exact in float32
    if rounded == "inv_freq":
        inv_freq = bf16(inv_freq)
    return np.outer(t.astype(np.float64), inv_freq.astype(np.float64))


def real_model_tables(name: str, dtype: torch.dtype, precision: str):
    """The tables of a released config (one layer each, which RoPE does not depend on)."""
    raw = RELEASED_CONFIGS[REAL[name]]
    raw = {**raw, "num_hidden_layers": 1, "vision_config": {**raw["vision_config"], "num_hidden_layers": 1}}
    with torch.device("meta"):
        model = CogVLMForCausalLM(ModelConfig.from_dict(raw))
    model.init_rope("cpu", dtype, precision)
    return model.config, model.rope_cos, model.rope_sin


@pytest.mark.parametrize("name", ["v1", "v2"])
def test_official_bf16_tables_equal_a_bf16_computation_done_here(name):
    cfg, cos, sin = real_model_tables(name, torch.bfloat16, "official")
    assert cos.dtype == sin.dtype == torch.bfloat16 and cos.shape == (cfg.max_position_embeddings, cfg.head_dim)
    angles = reference_angles(cfg.rope_base, cfg.head_dim, cfg.max_position_embeddings, rounded="all")
    for table, fn in ((cos, np.cos), (sin, np.sin)):
        ours = table.float().numpy()
        np.testing.assert_array_equal(ours[:, : cfg.head_dim // 2], ours[:, cfg.head_dim // 2 :])  # rotate-half
        expected = bf16(fn(angles.astype(np.float64)))
        ours = ours[:, : cfg.head_dim // 2]
        # cos/sin of the same bf16 angle, rounded to bf16: equal but where float32 libm and float64 differ
        # at a rounding boundary (one bf16 step, |value| <= 1 so at most 2^-8)
        assert np.abs(ours - expected).max() <= 2.0**-8
        assert (ours == expected).mean() > 0.999


@pytest.mark.parametrize("name", ["v1", "v2"])
@pytest.mark.parametrize("precision,rounded", [("fp32", "none"), ("hf", "inv_freq")])
def test_fp32_position_tables_equal_rope_on_exact_or_rounded_inv_freq(name, precision, rounded):
    cfg, cos, sin = real_model_tables(name, torch.bfloat16, precision)
    assert cos.dtype == torch.float32
    angles = reference_angles(cfg.rope_base, cfg.head_dim, cfg.max_position_embeddings, rounded=rounded)
    # fp32 angle p * inv_freq is off by at most ~p * 2^-24 rad (plus the pow's ulp in inv_freq)
    tolerance = 1e-6 + 4 * 2.0**-24 * np.arange(cfg.max_position_embeddings)[:, None]
    assert (np.abs(cos.numpy()[:, : cfg.head_dim // 2] - np.cos(angles)) <= tolerance).all()
    assert (np.abs(sin.numpy()[:, : cfg.head_dim // 2] - np.sin(angles)) <= tolerance).all()


def test_official_bf16_positions_coincide_as_the_spec_says():
    _, cos, _ = real_model_tables("v2", torch.bfloat16, "official")
    for position, rounded in ((257, 256), (301, 300), (511, 512)):  # spec: bf16 positions
        assert torch.equal(cos[position], cos[rounded])
    assert not torch.equal(cos[255], cos[256])


def test_official_and_fp32_differ_in_bf16_as_the_spec_measures():
    """spec (cogvlm2-video.md, RoPE numerics): bf16 inv_freq is off by up to 1.8e-3 (index 1); cos deviates from
    exact RoPE by up to ~0.1 at position 64 and up to ~1 beyond 256."""
    cfg, official, _ = real_model_tables("v2", torch.bfloat16, "official")
    _, exact, _ = real_model_tables("v2", torch.bfloat16, "fp32")
    inv_freq = 1.0 / cfg.rope_base ** (np.arange(0, cfg.head_dim, 2) / cfg.head_dim)
    error = np.abs(bf16(inv_freq.astype(np.float32)) - inv_freq)
    assert error.argmax() == 1 and 1.7e-3 < error.max() < 1.9e-3
    gap = (official.float() - exact).abs().amax(dim=1)
    assert 0.05 < gap[: 65].max() < 0.2 and gap[300:].max() > 0.9


def test_in_fp32_every_precision_gives_the_same_tables():
    _, cos_a, sin_a = real_model_tables("v1", torch.float32, "fp32")
    for precision in ("official", "hf"):
        _, cos_b, sin_b = real_model_tables("v1", torch.float32, precision)
        assert torch.equal(cos_a, cos_b) and torch.equal(sin_a, sin_b)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="RoPE precision"):
        real_model_tables("v1", torch.bfloat16, "fp16")


def test_precision_reaches_the_loaded_model(tiny_dir):
    official = VisualExpertModel.load(tiny_dir, device="cpu", dtype=torch.bfloat16)
    exact = VisualExpertModel.load(tiny_dir, device="cpu", dtype=torch.bfloat16, rope_precision="fp32")
    if official.config.variant == GLM4V:  # spec (glm-4v.md): fp32 tables whatever the option
        assert official.model.rope_precision == exact.model.rope_precision == "fp32"
        assert torch.equal(official.model.rope_cos, exact.model.rope_cos)
        return
    assert (official.model.rope_precision, official.model.rope_cos.dtype) == ("official", torch.bfloat16)
    assert (exact.model.rope_precision, exact.model.rope_cos.dtype) == ("fp32", torch.float32)
    assert not torch.equal(official.model.rope_cos.float(), exact.model.rope_cos)
