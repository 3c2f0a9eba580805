"""Generation on tiny checkpoints: batch invariance, KV cache, sampling, beams, image reuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.api import GenerationSettings
from model.processor import split_prompt_ids
from model.generate import (
    beam_search,
    decode_step,
    full_logits,
    generate_rows,
    layout_batch,
    prefill,
    start_cache,
)
from tests.images import rgb

TEXTS = ["What is in the picture?", "Hi", "Describe the scene in as much detail as you can, please."]


@pytest.fixture(scope="module")
def pixels(vem):
    return np.stack([vem.processor.preprocess(rgb(64, 48)), vem.processor.preprocess(rgb(40, 90).rotate(30))])


def encode(vem, texts):
    """(the ids before the image, [text ids after it per row]) of templated prompts."""
    split = [split_prompt_ids(vem.tokenizer.encode(vem.build_prompt(t), add_special_tokens=False), vem.config) for t in texts]
    return split[0][0], [text for _, text in split]


def encode_images(vem, pixels):
    """(image token features, CogAgent's high-res features or None)."""
    low, high = vem.processor.split(torch.as_tensor(pixels))
    return vem.model.encode_images(low), vem.model.encode_cross_images(high) if high is not None else None


def prefill_logits(vem, pixels, texts, image_of_row):
    """Next-token logits [B, V] from the cached prefill, in the caller's row order."""
    features, cross = encode_images(vem, pixels)
    lead, text_ids = encode(vem, texts)
    batch = layout_batch(vem.model, text_ids, image_of_row, lead)
    cache, valid = start_cache(vem.model, batch, 1)
    return torch.stack(batch.restore(list(prefill(vem.model, features, batch, cache, valid, cross))))


def test_rows_are_the_same_alone_and_in_a_padded_batch(vem, pixels):
    image_of_row = [0, 1, 0]
    batched = prefill_logits(vem, pixels, TEXTS, image_of_row)
    for r, text in enumerate(TEXTS):
        alone = prefill_logits(vem, pixels[[image_of_row[r]]], [text], [0])
        torch.testing.assert_close(batched[r], alone[0], rtol=1e-5, atol=1e-5)

    settings = GenerationSettings(max_new_tokens=8)
    prompts = [vem.build_prompt(t) for t in TEXTS]
    together = vem.generate(pixels, prompts, image_index=image_of_row, settings=settings)
    for r, prompt in enumerate(prompts):
        [alone] = vem.generate(pixels, [prompt], image_index=[image_of_row[r]], settings=settings)
        assert alone.token_ids == together[r].token_ids
        assert alone.text == together[r].text


def test_prefill_matches_one_pass_over_the_spec_layout(vem, pixels):
    features, cross = encode_images(vem, pixels)
    image_of_row = [1, 0, 1]
    lead, texts = encode(vem, TEXTS)
    torch.testing.assert_close(
        prefill_logits(vem, pixels, TEXTS, image_of_row),
        full_logits(vem.model, features, image_of_row, texts, lead, cross),
        rtol=1e-5,
        atol=1e-5,
    )


def test_cached_decoding_equals_full_recomputation_every_step(vem, pixels):
    model = vem.model
    features, cross = encode_images(vem, pixels)
    image_of_row = [1, 0]  # laid out in the other order: rows line up with the reference after restore
    lead, texts = encode(vem, TEXTS[:2])
    steps = 6
    batch = layout_batch(model, texts, image_of_row, lead)
    cache, valid = start_cache(model, batch, steps)
    logits = prefill(model, features, batch, cache, valid, cross)
    positions = batch.suffix_positions[:, -1] + 1
    generated = [[] for _ in texts]
    for step in range(steps):
        reference = full_logits(model, features, image_of_row, [t + g for t, g in zip(texts, generated)], lead, cross)
        torch.testing.assert_close(torch.stack(batch.restore(list(logits))), reference, rtol=1e-5, atol=1e-5)
        tokens = logits.argmax(-1)
        for row, token in zip(generated, batch.restore(tokens.tolist())):
            row.append(token)
        logits = decode_step(model, tokens, positions, cache, valid, batch.prompt_len + step)
        positions = positions + 1


def test_sampling_is_reproducible_with_a_seed(vem, pixels):
    prompts = [vem.build_prompt(t) for t in TEXTS]

    def run(seed):
        settings = GenerationSettings(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=seed)
        return [g.token_ids for g in vem.generate(pixels, prompts, [0, 1, 1], settings)]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_one_beam_equals_greedy(vem, pixels):
    features, cross = encode_images(vem, pixels)
    lead, texts = encode(vem, TEXTS)
    batch = layout_batch(vem.model, texts, [0, 1, 0], lead)
    greedy = generate_rows(vem.model, features, batch, GenerationSettings(max_new_tokens=10), cross)
    beams = beam_search(vem.model, features, batch, num_beams=1, max_new_tokens=10, cross=cross)
    assert [(r.token_ids, r.finish_reason) for r in beams] == [(r.token_ids, r.finish_reason) for r in greedy]


def force_stop_after(monkeypatch, model, calls: int, stop_id: int) -> list[int]:
    """Make stop_id the best token from the `calls`-th logits computation on; returns the call counter."""
    original, seen = model.logits, [0]

    def logits(hidden):
        out = original(hidden)
        seen[0] += 1
        if seen[0] >= calls:
            out[:, stop_id] += 30.0
        return out

    monkeypatch.setattr(model, "logits", logits)
    return seen


def test_greedy_stops_at_each_eos_id(vem, pixels, monkeypatch):
    for stop_id in vem.config.eos_token_ids:  # v2 stops on either of its two
        monkeypatch.undo()
        force_stop_after(monkeypatch, vem.model, 4, stop_id)
        prompts = [vem.build_prompt(t) for t in TEXTS]
        outs = vem.generate(pixels, prompts, [0, 1, 0], GenerationSettings(max_new_tokens=20))
        for out in outs:
            assert out.finish_reason == "eos" and len(out.token_ids) == 3
            assert stop_id not in out.token_ids


@pytest.mark.parametrize("stop_after", [3, None])
def test_beam_search_returns_finished_or_full_length_hypotheses(vem, pixels, monkeypatch, stop_after):
    calls = [0]
    if stop_after:
        calls = force_stop_after(monkeypatch, vem.model, stop_after, vem.config.eos_token_ids[-1])
    settings = GenerationSettings(max_new_tokens=6, num_beams=3)
    prompts = [vem.build_prompt(t) for t in TEXTS]
    outs = vem.generate(pixels, prompts, [0, 1, 0], settings)
    for out in outs:
        assert not set(out.token_ids) & set(vem.config.eos_token_ids)
        if out.finish_reason == "length":
            assert len(out.token_ids) == settings.max_new_tokens
        else:
            assert out.finish_reason == "eos" and len(out.token_ids) < settings.max_new_tokens
    if stop_after:
        assert {o.finish_reason for o in outs} == {"eos"}
    # beams do not leak across rows either
    calls[0] = 0
    [alone] = vem.generate(pixels, [prompts[1]], [1], settings)
    assert alone.token_ids == outs[1].token_ids


def test_each_image_goes_through_the_vision_tower_once(vem, pixels, monkeypatch):
    towers = [vem.model.vision_tower]
    if vem.config.cross_vision is not None:  # CogAgent: the high-res tower too
        towers.append(vem.model.model.cross_vision)
    encoded = []
    for tower in towers:
        original = tower.forward
        monkeypatch.setattr(tower, "forward", lambda images, f=original: encoded.append(images.shape[0]) or f(images))
    prompts = [vem.build_prompt(f"Where is thing {i}?") for i in range(5)]
    outs = vem.generate(pixels, prompts, image_index=[1, 1, 1, 1, 1], settings=GenerationSettings(max_new_tokens=3))
    assert encoded == [1] * len(towers)  # one call, one image: image 0 is not used at all
    assert len(outs) == 5
    encoded.clear()
    vem.generate(pixels, prompts, image_index=[0, 1, 0, 1, 0], settings=GenerationSettings(max_new_tokens=3))
    assert encoded == [2] * len(towers)


def test_rows_sharing_an_image_match_rows_with_their_own_copy(vem, pixels):
    prompts = [vem.build_prompt(t) for t in TEXTS]
    settings = GenerationSettings(max_new_tokens=6)
    shared = vem.generate(pixels[[0]], prompts, image_index=[0, 0, 0], settings=settings)
    copies = vem.generate(np.repeat(pixels[[0]], 3, axis=0), prompts, settings=settings)
    assert [g.token_ids for g in shared] == [g.token_ids for g in copies]


def test_bad_inputs_are_refused(vem, pixels):
    with pytest.raises(ValueError, match="image_index"):
        vem.generate(pixels, ["a"], image_index=[2])
    with pytest.raises(ValueError, match="pixel_values"):
        vem.generate(pixels[:, :, :10], ["a"])
    with pytest.raises(ValueError, match="temperature 0"):
        GenerationSettings(num_beams=2, temperature=0.5)
    assert vem.generate(pixels, []) == []
