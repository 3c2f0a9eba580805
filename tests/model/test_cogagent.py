"""CogAgent's rules (shared/spec/cogagent.md), checked against plain re-statements of the spec."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.api import GenerationSettings, VisualExpertModel
from model.cogagent import CrossKV, apply_rope_2d, rope_2d_tables
from model.config import CrossVisionConfig
from model.generate import full_logits
from model.model import KVCache
from model.tiny import write_tiny_checkpoint
from tests.images import rgb


@pytest.fixture(scope="module")
def agent(tmp_path_factory) -> VisualExpertModel:
    return VisualExpertModel.load(write_tiny_checkpoint(tmp_path_factory.mktemp("cogagent"), "cogagent"), device="cpu")


@pytest.fixture(scope="module")
def pixels(agent):
    return np.stack([agent.processor.preprocess(rgb(64, 48)), agent.processor.preprocess(rgb(40, 90).rotate(30))])


def test_rope_tables_follow_the_spec_formula():
    x = CrossVisionConfig(image_size=56, width=32, layers=2, head_width=16, mlp_ratio=2.6667, patch_size=14,
                          embed_dim=16, pt_hw_seq_len=16, layer_norm_eps=1e-6)
    cos, sin = rope_2d_tables(x, "cpu")
    g, half = 4, 8
    for p in range(g * g):
        row, col = divmod(p, g)  # patch p = row * g + col
        for dim in range(16):
            m = (dim % half) // 2  # adjacent dims share a frequency
            f = 10000 ** (-2 * m / half)
            t = (row if dim < half else col) / g * 16  # interpolated to the pre-training grid
            assert math.isclose(cos[p, dim].item(), math.cos(t * f), abs_tol=1e-6)
            assert math.isclose(sin[p, dim].item(), math.sin(t * f), abs_tol=1e-6)
    v = torch.arange(4.0)
    angle = torch.tensor([0.3, 0.3, 1.1, 1.1])
    out = apply_rope_2d(v, angle.cos(), angle.sin())
    expected = [0 * math.cos(0.3) - 1 * math.sin(0.3), 1 * math.cos(0.3) + 0 * math.sin(0.3),
                2 * math.cos(1.1) - 3 * math.sin(1.1), 3 * math.cos(1.1) + 2 * math.sin(1.1)]
    torch.testing.assert_close(out, torch.tensor(expected))


def naive_cross(q, k, v):  # q [L, heads, d] over one image's k, v [heads, P, d]
    scores = torch.einsum("lhd,hpd->hlp", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("hlp,hpd->lhd", scores.softmax(-1), v)


@pytest.mark.parametrize("image_of_row", [[0, 1, 2], [2, 0, 2, 2, 1, 0], [1, 1, 1]])
def test_rows_sharing_an_image_attend_to_its_one_copy(image_of_row):
    gen = torch.Generator().manual_seed(0)
    layers, u, heads, p, d, l = 2, 3, 4, 7, 8, 3
    k, v = torch.randn(layers, u, heads, p, d, generator=gen), torch.randn(layers, u, heads, p, d, generator=gen)
    rows = torch.tensor(image_of_row)
    q = torch.randn(len(rows), heads, l, d, generator=gen)
    cross = CrossKV(k, v, rows)
    for layer in range(layers):
        out = cross.attend(layer, q)
        for r, image in enumerate(image_of_row):
            expected = naive_cross(q[r].transpose(0, 1), k[layer, image], v[layer, image]).transpose(0, 1)
            torch.testing.assert_close(out[r], expected, rtol=1e-5, atol=1e-5)
    again = cross.for_rows(rows[[0, 0]])
    assert again.k.data_ptr() == k.data_ptr()  # new rows read the same tensors: nothing is copied


def test_decoder_layer_order_matches_the_spec(agent):
    """h = x + self_attn(norm_in(x)); h = h + cross(norm_cross(h)); y = h + mlp(norm_post(h))."""
    model, cfg = agent.model, agent.config
    layer = model.model.layers[0]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, cfg.hidden_size, generator=gen)
    encoded = torch.randn(2, 9, cfg.cross_vision.width, generator=gen)
    positions = torch.arange(5).expand(2, 5)
    cos, sin = model.rope_cos[positions].unsqueeze(1), model.rope_sin[positions].unsqueeze(1)
    cache = KVCache.allocate(cfg, 2, 5, "cpu", torch.float32)
    cache.cross = model.cross_key_values(encoded, torch.arange(2))
    y = layer(x, cos, sin, None, None, cache, 0, 0)

    fresh = KVCache.allocate(cfg, 2, 5, "cpu", torch.float32)
    h = x + layer.self_attn(layer.input_layernorm(x), cos, sin, None, None, fresh, 0, 0)
    c, heads = layer.cross_attn, cfg.num_attention_heads
    q = c.query(layer.post_cross_attention_layernorm(h)).view(2, 5, heads, -1)
    kv = F.linear(encoded, c.key_value.weight)  # rows: k (first C), then v
    k, v = kv[..., : c.width].view(2, 9, heads, -1), kv[..., c.width :].view(2, 9, heads, -1)
    attended = torch.stack([naive_cross(q[b], k[b].transpose(0, 1), v[b].transpose(0, 1)) for b in range(2)])
    h = h + c.dense(attended.reshape(2, 5, -1))
    expected = h + layer.mlp.language_mlp(layer.post_attention_layernorm(h))
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_cross_keys_values_are_computed_once_per_image(agent, pixels, monkeypatch):
    """Once at prefill, one copy per image (not per row); decode steps run neither tower nor key_value."""
    model = agent.model
    calls, stored = [], []
    for layer in model.model.layers:
        original = layer.cross_attn.key_values
        monkeypatch.setattr(layer.cross_attn, "key_values", lambda e, f=original: calls.append(e.shape[0]) or f(e))
    original_kv = model.cross_key_values
    monkeypatch.setattr(model, "cross_key_values", lambda e, rows: stored.append(original_kv(e, rows)) or stored[-1])
    prompts = [agent.build_prompt(f"Where is button {i}?") for i in range(5)]
    agent.generate(pixels, prompts, image_index=[1, 0, 1, 1, 0], settings=GenerationSettings(max_new_tokens=6))
    assert calls == [2] * len(model.model.layers)  # two images, each layer once
    [kv] = stored
    assert kv.k.shape[:2] == (len(model.model.layers), 2) and kv.image_of_row.shape == (5,)


def test_the_last_high_res_block_never_runs(agent, pixels, monkeypatch):
    blocks = agent.model.model.cross_vision.vit.model.blocks
    monkeypatch.setattr(blocks[-1], "forward", lambda *a: pytest.fail("the last block ran"))
    agent.generate(pixels, [agent.build_prompt("hi")], settings=GenerationSettings(max_new_tokens=2))


def test_high_res_features_reach_the_output(agent, pixels):
    """Two images with the same low-res pixels but different high-res ones answer differently."""
    s = agent.processor.image_size**2
    mixed = pixels.copy()
    mixed[1, :, :s] = pixels[0, :, :s]
    model = agent.model
    low, high = agent.processor.split(torch.as_tensor(mixed))
    features = model.encode_images(low)
    torch.testing.assert_close(features[0], features[1])
    text = agent.tokenizer.encode(agent.build_prompt("What is it?"), add_special_tokens=False)
    logits = full_logits(model, features, [0, 1], [text, text], cross=model.encode_cross_images(high))
    assert not torch.allclose(logits[0], logits[1])


def test_vqa_template_keeps_eoi_as_text(agent):
    prompt = agent.build_prompt("How many?", "vqa")
    assert prompt == "<EOI>Question: How many? Short answer:"
    ids = agent.tokenizer.encode(prompt, add_special_tokens=False)
    assert agent.tokenizer.decode(ids) == prompt and not set(ids) & set(agent.tokenizer.all_special_ids)
