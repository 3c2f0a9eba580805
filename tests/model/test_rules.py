"""The spec's expert-routing and position-id rules, alone and inside a left-padded batch."""

from __future__ import annotations

import torch

from model.generate import layout_batch
from model.model import grouped_attention, rope_positions, vision_expert_mask
from model.processor import build_input_ids, split_prompt_ids

# bos, boi, 3 patches, eoi, 2 text tokens
TYPES = torch.tensor([0, 1, 1, 1, 1, 1, 0, 0])


def test_vision_expert_for_boi_and_patches_not_eoi():
    assert vision_expert_mask(TYPES).tolist() == [False, True, True, True, True, False, False, False]


def test_last_position_is_always_language():
    assert vision_expert_mask(torch.tensor([0, 1, 1, 1])).tolist() == [False, True, True, False]


def test_positions_bos0_boi1_patches2_eoi3_text4():
    assert rope_positions(TYPES).tolist() == [0, 1, 2, 2, 2, 3, 4, 5]


def test_rules_apply_row_by_row_in_a_batch():
    rows = torch.stack([TYPES, torch.tensor([0, 1, 1, 1, 1, 0, 0, 0])])
    assert rope_positions(rows).tolist() == [[0, 1, 2, 2, 2, 3, 4, 5], [0, 1, 2, 2, 3, 4, 5, 6]]


def prompt_lead(vem) -> list[int]:
    """The ids before the image in this checkpoint's prompts: [bos], or GLM-4V's [gMASK]<sop><|user|>\\n."""
    return split_prompt_ids(vem.tokenizer.encode(vem.build_prompt("x"), add_special_tokens=False), vem.config)[0]


def test_input_ids_layout(vem, variant):
    cfg = vem.config
    lead = prompt_lead(vem)
    if variant == "glm4v":  # spec (glm-4v.md): [gMASK] <sop> <|user|> "\n", then the image placeholder
        special = vem.tokenizer.convert_tokens_to_ids(["[gMASK]", "<sop>", "<|user|>"])
        assert lead == special + vem.tokenizer.encode("\n", add_special_tokens=False)
    else:
        assert lead == [cfg.bos_token_id]
    ids, types = build_input_ids([7, 8], cfg, lead)
    n = cfg.num_image_tokens
    assert ids == lead + [cfg.pad_token_id] * n + [7, 8]
    assert types == [0] * len(lead) + [1] * n + [0, 0]


def test_left_padded_row_keeps_its_own_positions_and_routing(vem):
    cfg = vem.config
    n = cfg.num_image_tokens
    lead = prompt_lead(vem)
    k = len(lead)  # CogVLM: bos at 0; GLM-4V: [gMASK] 0, <sop> 1, <|user|> 2, "\n" 3
    short, long = [5], [5, 6, 7, 8]
    batch = layout_batch(vem.model, [short, long], [0, 0], lead)
    # the image prefix (lead, boi, patches) is shared: boi k, patches k+1; boi and patches use vision
    assert batch.prefix_positions.tolist() == list(range(k)) + [k] + [k + 1] * (n - 2)
    assert batch.prefix_vision.tolist() == [False] * k + [True] * (n - 1)
    # suffix: eoi k+2 then text from k+3, language experts; the short row is left-padded with position 0
    e = k + 2
    assert batch.suffix_positions.tolist() == [[0, 0, 0, e, e + 1], [e, e + 1, e + 2, e + 3, e + 4]]
    assert batch.suffix_valid.tolist() == [[False, False, False, True, True], [True] * 5]
    assert not batch.suffix_vision.any()
    assert batch.eoi_slot.tolist() == [3, 0]
    # identical to the row laid out alone
    alone = layout_batch(vem.model, [short], [0], lead)
    assert alone.suffix_positions.tolist() == [[e, e + 1]]


def naive_attention(q, k, v, allowed):
    """Per query head h, kv head h // group, explicit softmax over allowed keys."""
    group = q.shape[1] // k.shape[1]
    out = torch.empty_like(q)
    for h in range(q.shape[1]):
        scores = q[:, h] @ k[:, h // group].transpose(-1, -2) / q.shape[-1] ** 0.5  # [B, L, S]
        scores = scores.masked_fill(~allowed[:, 0], float("-inf"))
        out[:, h] = scores.softmax(-1) @ v[:, h // group]
    return out


def test_grouped_query_attention_maps_query_heads_to_kv_heads():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 5, 8, generator=gen) for h in (6, 2, 2))
    causal = torch.ones(5, 5, dtype=torch.bool).tril().expand(2, 1, 5, 5)
    torch.testing.assert_close(grouped_attention(q, k, v, None), naive_attention(q, k, v, causal))
    allowed = causal.clone()
    allowed[0, :, :, :2] = False  # row 0 left-padded by two slots
    allowed[0, :, [0, 1], [0, 1]] = True  # padding queries see themselves
    torch.testing.assert_close(grouped_attention(q, k, v, allowed), naive_attention(q, k, v, allowed))
