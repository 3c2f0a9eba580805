"""Batched generation: prefill once, then one token per step from a preallocated KV cache.

Cache layout per row: [bos, boi, patches | left padding, eoi, text | generated]. The first part
(the image prefix) depends only on the image, so it is computed once per unique image and
copied to every row that shares it (the `ground` task asks many questions per image). GLM-4V's
prefix starts with `[gMASK]<sop><|user|>\\n` instead of bos. CogAgent's cross-attention keys and
values are computed once per image at prefill and read in place by every row and step. Position
ids follow each row's own tokens, starting at 0 at its bos, and padding is masked out, so a row's
result does not depend on what it is batched with (spec: the reference gets this wrong).

    python -m model.generate --model DIR [--tokenizer DIR] --image PATH --prompt TEXT
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from model.config import ROPE_PRECISIONS
from model.model import CogVLMForCausalLM, KVCache, rope_positions, vision_expert_mask
from model.processor import TEMPLATES, build_input_ids


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    num_beams: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.num_beams < 1:
            raise ValueError("max_new_tokens and num_beams must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        if self.num_beams > 1 and self.temperature > 0:
            raise ValueError("beam search does not sample: set temperature 0 with num_beams > 1")


@dataclass
class RowResult:
    token_ids: list[int]  # generated tokens, without the stop token
    finish_reason: str  # "eos" or "length"


# ----------------------------------------------------------------------------- batch layout


def right_align(rows: Sequence[Sequence], fill, dtype, device) -> Tensor:
    """Left-pad rows of different lengths to one [B, max len] tensor."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), fill, dtype=dtype)
    for i, r in enumerate(rows):
        if len(r):
            out[i, width - len(r):] = torch.as_tensor(r, dtype=dtype)
    return out.to(device)


@dataclass
class Batch:
    """Rows as [image prefix | left-padded suffix], reordered so that row u is the first user of image u."""

    order: list[int]  # order[i] = the caller's row laid out as row i
    image_of_row: Tensor  # [B] index into the encoded images
    prefix_positions: Tensor  # [n_prefix], the same for every row
    prefix_vision: Tensor  # [n_prefix] bool
    suffix_ids: Tensor  # [B, Ls]; the eoi slot and padding hold pad ids (eoi's embedding is replaced)
    suffix_positions: Tensor  # [B, Ls], 0 on padding
    suffix_vision: Tensor  # [B, Ls] bool
    suffix_valid: Tensor  # [B, Ls] bool
    eoi_slot: Tensor  # [B] where eoi sits in the suffix
    lead_ids: Tensor  # [n_lead] the ids before the image, the same for every row: [bos], or GLM-4V's

    @property
    def size(self) -> int:
        return self.suffix_ids.shape[0]

    @property
    def prefix_len(self) -> int:
        return self.prefix_positions.shape[0]

    @property
    def prompt_len(self) -> int:  # cache slots the prompt takes
        return self.prefix_len + self.suffix_ids.shape[1]

    def restore(self, rows: list) -> list:
        """Per-row results in laid-out order -> the caller's order."""
        out = [None] * len(rows)
        for i, r in enumerate(self.order):
            out[r] = rows[i]
        return out


def layout_batch(model: CogVLMForCausalLM, text_ids: Sequence[Sequence[int]], image_of_row: Sequence[int],
                 lead: Sequence[int] | None = None) -> Batch:
    """Token ids of each row's text (no special tokens) and the encoded image it uses -> the cache layout.
    `lead`: the ids before the image, shared by all rows (default [bos]; see processor.split_prompt_ids).

    Every encoded image 0..U-1 must be used; its first user is moved to row u, so the prefill can
    write the image prefix straight into that row and copy it to the other users.
    """
    cfg, device = model.config, model.lm_head.weight.device
    unique = sorted(set(image_of_row))
    if unique != list(range(len(unique))):
        raise ValueError(f"rows must use every encoded image 0..{len(unique) - 1}, got {sorted(set(image_of_row))}")
    first_users = [list(image_of_row).index(u) for u in unique]
    order = first_users + sorted(set(range(len(text_ids))) - set(first_users))
    # the image prefix is bos (the lead), boi and the patches; eoi is routed to language (spec) and starts the suffix
    lead = [cfg.bos_token_id] if lead is None else list(lead)
    n_prefix = len(lead) + cfg.num_image_tokens - 1
    positions, vision, suffix_ids = [], [], []
    for r in order:
        ids, types = build_input_ids(text_ids[r], cfg, lead)
        types = torch.tensor(types)
        positions.append(rope_positions(types).tolist())  # spec rules on the row alone, bos at 0
        vision.append(vision_expert_mask(types).tolist())
        suffix_ids.append(ids[n_prefix:])
    lengths = torch.tensor([len(s) for s in suffix_ids])
    width = int(lengths.max())
    return Batch(
        order=order,
        image_of_row=torch.tensor([image_of_row[r] for r in order], device=device),
        prefix_positions=torch.tensor(positions[0][:n_prefix], device=device),
        prefix_vision=torch.tensor(vision[0][:n_prefix], device=device),
        suffix_ids=right_align(suffix_ids, cfg.pad_token_id, torch.long, device),
        suffix_positions=right_align([p[n_prefix:] for p in positions], 0, torch.long, device),
        suffix_vision=right_align([v[n_prefix:] for v in vision], False, torch.bool, device),
        suffix_valid=right_align([[True] * len(s) for s in suffix_ids], False, torch.bool, device),
        eoi_slot=(width - lengths).to(device),
        lead_ids=torch.tensor(lead, device=device),
    )


@dataclass
class PaddedBatch:
    """Whole rows left-padded to one width, for prompts whose vision part differs in length per row
    (videos: T frames each). Every row's positions start at 0 at its own bos and padding is masked,
    so a row gives what it gives alone (spec (cogvlm2-video): the reference cannot batch videos)."""

    ids: Tensor  # [B, L]; vision slots and padding hold pad ids (their embeddings are replaced or masked)
    positions: Tensor  # [B, L], 0 on padding
    valid: Tensor  # [B, L] bool
    vision_slots: Tensor  # [B, L] bool: slots whose embedding is replaced by the row's features
    features_of_row: list[int]  # row -> which encoded video

    prefix_len = 0  # nothing is shared between rows

    @property
    def size(self) -> int:
        return self.ids.shape[0]

    @property
    def prompt_len(self) -> int:
        return self.ids.shape[1]

    @property
    def suffix_positions(self) -> Tensor:  # the whole row is "suffix": decoding continues from its end
        return self.positions

    def restore(self, rows: list) -> list:
        return list(rows)


def layout_padded(model: CogVLMForCausalLM, rows: Sequence[tuple[list[int], list[int]]], features_of_row: Sequence[int]) -> PaddedBatch:
    """(input ids, token types) of each unpadded row and the encoded features it uses -> a PaddedBatch."""
    device = model.lm_head.weight.device
    types = [torch.tensor(t) for _, t in rows]
    return PaddedBatch(
        ids=right_align([ids for ids, _ in rows], model.config.pad_token_id, torch.long, device),
        positions=right_align([rope_positions(t).tolist() for t in types], 0, torch.long, device),
        valid=right_align([[True] * len(ids) for ids, _ in rows], False, torch.bool, device),
        vision_slots=right_align([(t == 1).tolist() for t in types], False, torch.bool, device),
        features_of_row=list(features_of_row),
    )


@torch.no_grad()
def prefill_padded(model: CogVLMForCausalLM, features: Sequence[Tensor], batch: PaddedBatch, cache: KVCache, valid: Tensor) -> Tensor:
    """features: per encoded video [vision slots, H] -> next-token logits [B, V]; fills the cache."""
    x = model.embed(batch.ids)  # [B, L, H]
    for row, f in enumerate(batch.features_of_row):
        x[row, batch.vision_slots[row]] = features[f].to(x.dtype)  # spec: replace, not add
    valid[:, : batch.prompt_len] = batch.valid
    # no visual expert (vision None): spec (cogvlm2-video)
    h = model(x, batch.positions, None, attention_mask(valid, 0, batch.prompt_len), cache, 0)
    return model.logits(h[:, -1])


def attention_mask(valid: Tensor, start: int, length: int) -> Tensor:
    """[B, T] filled cache slots -> [B, 1, length, start+length]: causal over filled slots."""
    keys = valid[:, None, : start + length]  # [B, 1, S]
    slots = torch.arange(start + length, device=valid.device)
    queries = slots[start:, None]  # [L, 1]
    # a padding query sees only itself, so no softmax row is empty (an empty one would give NaN)
    return ((keys & (slots <= queries)) | (slots == queries))[:, None]


# ----------------------------------------------------------------------------- prefill and decode


@torch.no_grad()
def prefill(model: CogVLMForCausalLM, features: Tensor, batch: "Batch | PaddedBatch", cache: KVCache, valid: Tensor,
            cross: Tensor | None = None) -> Tensor:
    """features [U, image tokens, H] -> next-token logits [B, V] in laid-out row order; fills the cache.
    cross: CogAgent's high-res features [U, P, W]; their keys/values go into the cache once."""
    if isinstance(batch, PaddedBatch):
        return prefill_padded(model, features, batch, cache, valid)
    u, b, n = features.shape[0], batch.size, batch.prefix_len
    if cross is not None:
        cache.cross = model.cross_key_values(cross, batch.image_of_row)
    lead = model.embed(batch.lead_ids.expand(u, -1))  # [U, n_lead, H]
    prefix = torch.cat([lead, features[:, :-1].to(lead.dtype)], dim=1)  # [U, n_prefix, H]
    model(prefix, batch.prefix_positions.expand(u, -1), batch.prefix_vision.expand(u, -1), None, cache.first_rows(u), 0)
    if b > u:  # rows sharing an image copy its prefix keys/values
        cache.copy_slots_(torch.arange(u, b, device=features.device), batch.image_of_row[u:], n)
    x = model.embed(batch.suffix_ids)  # [B, Ls, H]
    x[torch.arange(b, device=x.device), batch.eoi_slot] = features[batch.image_of_row, -1].to(x.dtype)
    valid[:, n : batch.prompt_len] = batch.suffix_valid
    mask = attention_mask(valid, n, x.shape[1])
    h = model(x, batch.suffix_positions, batch.suffix_vision, mask, cache, n)
    return model.logits(h[:, -1])


@torch.no_grad()
def decode_step(model, tokens: Tensor, positions: Tensor, cache: KVCache, valid: Tensor, slot: int) -> Tensor:
    """tokens [B] at position ids [B] into cache slot `slot` -> next-token logits [B, V]."""
    valid[:, slot] = True
    h = model(model.embed(tokens[:, None]), positions[:, None], None, attention_mask(valid, slot, 1), cache, slot)
    return model.logits(h[:, -1])


def start_cache(model, batch: Batch, max_new_tokens: int) -> tuple[KVCache, Tensor]:
    cfg, weight = model.config, model.lm_head.weight
    last = int(batch.suffix_positions[:, -1].max()) + max_new_tokens
    if last >= cfg.rope_positions:
        raise ValueError(
            f"prompt plus max_new_tokens reaches position {last}; this model has {cfg.rope_positions}"
        )
    slots = batch.prompt_len + max_new_tokens
    cache = KVCache.allocate(cfg, batch.size, slots, weight.device, weight.dtype)
    valid = torch.zeros(batch.size, slots, dtype=torch.bool, device=weight.device)
    valid[:, : batch.prefix_len] = True
    return cache, valid


def pick_tokens(logits: Tensor, settings: GenerationSettings, generator: torch.Generator | None) -> Tensor:
    """[B, V] fp32 logits -> [B] next tokens: argmax, or a temperature / nucleus sample."""
    if settings.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / settings.temperature, dim=-1)
    if settings.top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        outside = sorted_p.cumsum(-1) - sorted_p >= settings.top_p  # the top token always stays
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p.masked_fill(outside, 0.0))
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_rows(model, features: Tensor, batch: Batch, settings: GenerationSettings,
                  cross: Tensor | None = None) -> list[RowResult]:
    """Greedy or sampled decoding of every row until a stop token or max_new_tokens."""
    stop = set(model.config.eos_token_ids)  # spec: v2 stops at either of its two eos ids (GLM-4V: three)
    cache, valid = start_cache(model, batch, settings.max_new_tokens)
    logits = prefill(model, features, batch, cache, valid, cross)
    positions = batch.suffix_positions[:, -1] + 1
    generator = None
    if settings.temperature > 0:
        generator = torch.Generator(device=logits.device).manual_seed(settings.seed)
    results = [RowResult([], "") for _ in range(batch.size)]
    for step in range(settings.max_new_tokens):
        tokens = pick_tokens(logits, settings, generator)
        for row, token in zip(results, tokens.tolist()):
            if row.finish_reason:
                continue
            if token in stop:
                row.finish_reason = "eos"
            else:
                row.token_ids.append(token)
                if len(row.token_ids) == settings.max_new_tokens:
                    row.finish_reason = "length"
        if all(r.finish_reason for r in results):
            break
        logits = decode_step(model, tokens, positions, cache, valid, batch.prompt_len + step)
        positions = positions + 1
    return batch.restore(results)


@torch.no_grad()
def beam_search(model, features: Tensor, batch: Batch, num_beams: int, max_new_tokens: int,
                cross: Tensor | None = None) -> list[RowResult]:
    """Per-row beam search; a row is done once it has num_beams finished hypotheses.

    Scores are summed log-probabilities divided by the generated length (stop token included).
    """
    stop = set(model.config.eos_token_ids)
    k, b = num_beams, batch.size
    cache, valid = start_cache(model, batch, max_new_tokens)
    logits = prefill(model, features, batch, cache, valid, cross)
    beam_rows = torch.arange(b, device=logits.device).repeat_interleave(k)  # beams of a row are adjacent
    cache.reorder_(beam_rows)
    valid, logits = valid[beam_rows], logits[beam_rows]
    positions = batch.suffix_positions[beam_rows, -1] + 1
    scores = torch.zeros(b, k, device=logits.device)
    scores[:, 1:] = float("-inf")  # all beams start equal: let only the first one expand
    seqs: list[list[int]] = [[] for _ in range(b * k)]
    finished: list[list[tuple[float, list[int], str]]] = [[] for _ in range(b)]
    for step in range(max_new_tokens):
        logp = torch.log_softmax(logits, dim=-1)  # [B*K, V]
        vocab = logp.shape[-1]
        total = (scores[:, :, None] + logp.view(b, k, vocab)).view(b, k * vocab)
        # enough candidates that k survive even if every beam's every stop token ranks among them
        top_scores, top_index = (t.tolist() for t in total.topk(k * (1 + len(stop)), dim=-1))
        new_scores, sources, tokens = [], [], []
        for row in range(b):
            kept = []
            for rank, (score, index) in enumerate(zip(top_scores[row], top_index[row])):
                beam, token = divmod(index, vocab)
                seq = seqs[row * k + beam]
                if token in stop:
                    if rank < k and score > float("-inf"):
                        finished[row].append((score / (len(seq) + 1), seq, "eos"))
                elif len(kept) < k:
                    kept.append((score, row * k + beam, token))
            for score, source, token in kept:
                new_scores.append(score if len(finished[row]) < k else float("-inf"))
                sources.append(source)
                tokens.append(token)
        seqs = [seqs[s] + [t] for s, t in zip(sources, tokens)]
        scores = torch.tensor(new_scores, device=logits.device).view(b, k)
        if step == max_new_tokens - 1:
            for i, seq in enumerate(seqs):
                if new_scores[i] > float("-inf"):
                    finished[i // k].append((new_scores[i] / len(seq), seq, "length"))
        if all(len(f) >= k for f in finished) or step == max_new_tokens - 1:
            break
        rows = torch.tensor(sources, device=logits.device)
        cache.reorder_(rows)
        token_tensor = torch.tensor(tokens, device=logits.device)
        logits = decode_step(model, token_tensor, positions, cache, valid, batch.prompt_len + step)
        positions = positions + 1  # beams of a row share positions and filled slots
    return batch.restore([RowResult(*max(f, key=lambda h: h[0])[1:]) for f in finished])


# ----------------------------------------------------------------------------- reference path


@torch.no_grad()
def full_logits(model, features: Tensor, image_index: Sequence[int], token_rows: Sequence[Sequence[int]],
                lead: Sequence[int] | None = None, cross: Tensor | None = None) -> Tensor:
    """Next-token logits [B, V] after each row's whole sequence, recomputed in one pass.

    The spec's layout in its plainest form (left-padded [bos, image, text], no prefix sharing,
    a fresh cache): the oracle for tests and the naive baseline in benchmarks/model.py.
    """
    cfg, device = model.config, model.lm_head.weight.device
    lead = [cfg.bos_token_id] if lead is None else list(lead)
    rows = [build_input_ids(t, cfg, lead) for t in token_rows]
    ids = right_align([r[0] for r in rows], cfg.pad_token_id, torch.long, device)
    types = [torch.tensor(r[1]) for r in rows]
    positions = right_align([rope_positions(t).tolist() for t in types], 0, torch.long, device)
    vision = right_align([vision_expert_mask(t).tolist() for t in types], False, torch.bool, device)
    valid = right_align([[True] * len(r[0]) for r in rows], False, torch.bool, device)
    x = model.embed(ids)
    n, width = cfg.num_image_tokens, ids.shape[1]
    for i, (row_ids, _) in enumerate(rows):
        first = width - len(row_ids) + len(lead)  # image slots follow bos (the lead)
        x[i, first : first + n] = features[image_index[i]].to(x.dtype)
    cache = KVCache.allocate(cfg, len(rows), width, device, x.dtype)
    if cross is not None:
        cache.cross = model.cross_key_values(cross, torch.as_tensor(list(image_index), device=device))
    h = model(x, positions, vision, attention_mask(valid, 0, width), cache, 0)
    return model.logits(h[:, -1])


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate text for one image with a CogVLM-family checkpoint.")
    parser.add_argument("--model", required=True, help="checkpoint directory (config.json + safetensors)")
    parser.add_argument("--tokenizer", help="tokenizer directory (CogVLM v1 needs Vicuna-7B v1.5's)")
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--prompt", required=True, help="the query; wrapped in the template")
    parser.add_argument("--template", choices=[*TEMPLATES, "chat_old"], help="default: the checkpoint's (chat_old: CogAgent)")
    parser.add_argument("--max-new-tokens", type=int, default=GenerationSettings.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--rope-precision", choices=ROPE_PRECISIONS, default="official",
                        help="RoPE tables in bf16: official, hf or fp32 (README: RoPE numerics; default: %(default)s)")
    args = parser.parse_args(argv)

    from PIL import Image

    from model.api import VisualExpertModel  # the API builds on this module

    try:  # CheckpointError is a ValueError; a bad image is an OSError
        settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p, args.num_beams, args.seed)
        image = Image.open(args.image)
        dtype = getattr(torch, args.dtype) if args.dtype else None
        vem = VisualExpertModel.load(args.model, args.tokenizer, device=args.device, dtype=dtype, rope_precision=args.rope_precision)
    except (ValueError, OSError) as e:
        parser.error(str(e))
    pixels = vem.processor.preprocess(image)[None]
    try:
        prompt = vem.build_prompt(args.prompt, args.template)
    except ValueError as e:  # a template this checkpoint does not have
        parser.error(str(e))
    [out] = vem.generate(pixels, [prompt], settings=settings)
    print(f"# {vem.describe()} | {prompt!r} | {out.finish_reason}, {len(out.token_ids)} tokens")
    print(out.text)


if __name__ == "__main__":
    main()
