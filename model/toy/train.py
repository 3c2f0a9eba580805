"""Train the toy CogVLM (v1 layout) on toy.scenes; writes a checkpoint the ordinary loader reads.

    nice -n 10 python -m model.toy.train --out examples/toy-cogvlm --steps N [--work out/toy-train]

Seeded and deterministic for a given machine and thread count: scenes come from one
random.Random(seed), weights from torch.manual_seed(seed). Every --eval-every steps it measures
the quality on fresh scenes (greedy, through VisualExpertModel) and, when the score is the best
so far, rewrites --out: config.json, model.safetensors(.index.json), tokenizer files. --work holds
the latest weights and optimizer state, so a stopped run resumes with --resume.

The training step is teacher-forced cross-entropy on the answer tokens (and eos), through the
model's own forward (model.model.CogVLMForCausalLM): the same routing, positions and layout the
inference path uses, so what is trained is what is served. Each step draws --batch scenes and
trains every task on each (grounded caption, a ground question per shape, a caption or a
count); an image's prefix is computed once and shared by its rows through the KV interface,
as generation shares it (tests/model/toy/test_train.py checks this equals whole-sequence training).

What makes it read the image (without these the first run learned only the answer prior: the
same loss with shuffled images): position embeddings that start as a unit-scale 2-D table
(every patch shares one RoPE id, so they are the only "where"), small branch norms in the
post-norm tower, image tokens that start near unit scale, the tower and adapter frozen for the
first --freeze-vision steps, and one-shape scenes for the first --single-shape steps.

What makes it localize: a training-only linear probe on the image tokens (PatchProbe, weight
--patch-loss) learns from every patch what the shape under it is (colour, kind, left-to-right
rank), how many shapes there are, and its box values as soft 100-bin classes; the probe is not
part of the checkpoint. With the probe the tower trains from the start (--freeze-vision 0).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.config import ModelConfig
from model.model import CogVLMForCausalLM, rope_positions, vision_expert_mask
from model.processor import ImageProcessor, build_input_ids, load_tokenizer
from model.tiny import tiny_config, write_shards, write_tokenizer
from pipeline.labeling import CAPTION_PRESETS, GROUND_PROMPT, GROUNDED_CAPTION_PROMPT
from model.toy import scenes

CAPTION_PROMPTS = (*CAPTION_PRESETS.values(), "Describe this image.", "Describe the image.")
COUNT_PROMPTS = (scenes.COUNT_QUESTION, "How many shapes are in the image?")
ARTICLES = ("the ", "the ", "the ", "a ", "")
TOY_PATCH = tiny_config("cogvlm")["vision_config"]["patch_size"]  # the tower's patch: image_size // it = grid
RENDER_LONG_SIDE = 224  # scenes are drawn this large at most before the model's resize: same look, less work


def toy_config(args) -> dict:
    raw = tiny_config("cogvlm")
    grid = args.image_size // TOY_PATCH
    raw.update(
        hidden_size=args.hidden, intermediate_size=args.intermediate, num_attention_heads=args.heads,
        num_hidden_layers=args.layers, template_version="base", max_position_embeddings=1024,
    )
    raw["vision_config"].update(
        hidden_size=args.vision_hidden, intermediate_size=2 * args.vision_hidden, num_heads=args.heads,
        num_hidden_layers=args.vision_layers, image_size=args.image_size, num_positions=grid * grid + 1,
    )
    return raw


def grid_positions(grid: int, width: int) -> torch.Tensor:
    """[1 + grid*grid, width] fixed 2-D sine/cosine table (cls row zero): half the channels code
    the column, half the row, at unit scale like the patch features."""
    quarter = width // 4
    freqs = 1.0 / (grid ** (torch.arange(quarter) / max(1, quarter - 1)))  # wavelengths 2pi .. 2pi*grid
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    parts = [f(c.flatten()[:, None].float() * freqs) for c in (cols, rows) for f in (torch.sin, torch.cos)]
    table = torch.zeros(1 + grid * grid, width)
    table[1:, : 4 * quarter] = torch.cat(parts, dim=1)
    return table


def init_model(cfg: ModelConfig, seed: int, branch_scale: float = 0.1, image_token_gain: float = 25.0) -> CogVLMForCausalLM:
    """Every image token shares one RoPE id (spec), so where a patch is reaches the language model
    only through the tower's position embeddings: they start as a unit-scale 2-D table, not as
    0.02 noise that the patch features (std ~1, growing) drown. The tower is post-branch-norm
    (h + LN(branch(h))): with LN weights of 1 each layer adds unit-variance, mostly
    image-independent output; a small start (like LayerScale) keeps patch and position intact."""
    torch.manual_seed(seed)
    model = CogVLMForCausalLM(cfg)
    for name, p in model.named_parameters():
        if name.endswith("position_embedding.weight"):
            p.data.copy_(grid_positions(cfg.vision.grid, p.shape[1]))
        elif name.endswith((".boi", ".eoi", "cls_embedding", "embed_tokens.weight")):
            torch.nn.init.normal_(p, std=0.02)
        elif name.endswith("vision.linear_proj.dense_4h_to_h.weight"):
            # the adapter's gated product of small numbers gives image tokens of std ~0.02, which
            # the first layers' outputs (averages over the image) then overwrite; start them near 1
            p.data.mul_(image_token_gain)
        elif name.endswith(("dense.weight", "down_proj.weight", "fc2.weight", "dense_4h_to_h.weight")):
            p.data.mul_(0.5)  # residual outputs start small
        elif "transformer.layers" in name and name.endswith(("input_layernorm.weight", "post_attention_layernorm.weight")):
            p.data.fill_(branch_scale)
    return model


# ----------------------------------------------------------------------------- examples


@dataclass
class Example:
    pixels: np.ndarray  # uint8 [3, S, S]
    prompt: str
    answer: str


@dataclass
class SceneExamples:
    """One drawn scene and the (prompt, answer) rows trained on it: every task at once."""

    pixels: np.ndarray  # uint8 [3, S, S]
    rows: list[tuple[str, str]]
    patch_targets: np.ndarray | None = None  # int64 [grid * grid, len(PATCH_FIELDS)], see patch_targets
    weights: list[float] | None = None  # of each row's answer tokens in the loss (None: all 1)


# What each patch should tell the language model about the shape it lies on (training only: a
# linear probe on the image tokens, dropped when the checkpoint is written). Dense targets like
# these are what make localization learnable in a CPU budget: from the answer tokens alone the
# gradient that says "this patch is the red circle's left edge" is a few bits per scene.
PATCH_CLASSES = {"colour": 1 + len(scenes.COLOURS), "kind": 1 + len(scenes.KINDS), "rank": 4, "count": 3}
BOX_FIELDS = ("x0", "y0", "x1", "y1")  # the box text's values, 0..999
BOX_BINS = 100  # a value is learnt as a soft class over bins of 10: the first two digits, which a
# linear read-out can take from a place code (a linear probe cannot compute a digit of a scalar)
BOX_SIGMA = 10.0  # of the soft target, in box units
PATCH_FIELDS = (*PATCH_CLASSES, *BOX_FIELDS)


def patch_targets(scene: scenes.Scene, grid: int) -> np.ndarray:
    """[grid * grid, len(PATCH_FIELDS)]: for a patch on a shape (its cell centre inside the box,
    or the cell holding the box centre) the shape's colour, kind, left-to-right rank and the
    values of its box text; the shape count everywhere; -100 (ignored) for box values off the
    shapes."""
    colours, kinds = list(scenes.COLOURS), list(scenes.KINDS)
    out = np.full((grid * grid, len(PATCH_FIELDS)), -100, dtype=np.int64)
    out[:, 0:3] = 0  # background: no colour, no kind, no rank
    out[:, 3] = len(scene.shapes) - 1
    for rank, shape in enumerate(scene.shapes):
        x0, y0, x1, y1 = (shape.box[0] / scene.width * grid, shape.box[1] / scene.height * grid,
                          shape.box[2] / scene.width * grid, shape.box[3] / scene.height * grid)
        cells = {(r, c) for r in range(grid) for c in range(grid) if x0 <= c + 0.5 < x1 and y0 <= r + 0.5 < y1}
        cells.add((min(grid - 1, int((y0 + y1) / 2)), min(grid - 1, int((x0 + x1) / 2))))
        values = [int(v) for v in re.findall(r"\d+", scene.box_text(shape))]
        for r, c in cells:
            out[r * grid + c, :3] = (1 + colours.index(shape.colour), 1 + kinds.index(shape.kind), 1 + rank)
            out[r * grid + c, 4:] = values
    return out


class PatchProbe(torch.nn.Module):
    """Training-only linear heads on the image tokens the language model reads."""

    def __init__(self, hidden: int):
        super().__init__()
        self.sizes = [*PATCH_CLASSES.values(), *[BOX_BINS] * len(BOX_FIELDS)]
        self.heads = torch.nn.Linear(hidden, sum(self.sizes))
        self.register_buffer("centres", (torch.arange(BOX_BINS) + 0.5) * (1000 / BOX_BINS), persistent=False)

    def loss(self, patch_features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """patch_features [U, P, H], targets [U, P, fields] -> mean cross-entropy over fields."""
        logits = self.heads(patch_features).split(self.sizes, dim=-1)
        losses = []
        for i, part in enumerate(logits):
            target = targets[..., i].flatten()
            on = target != -100
            if not on.any():
                continue
            part = part.flatten(0, 1)[on]
            if i < len(PATCH_CLASSES):
                losses.append(F.cross_entropy(part, target[on]))
            else:  # soft classes: a Gaussian over the bins around the true value
                soft = torch.softmax(-((self.centres - target[on, None].float()) ** 2) / (2 * BOX_SIGMA**2), dim=-1)
                losses.append(-(soft * F.log_softmax(part, dim=-1)).sum(-1).mean())
        return torch.stack(losses).mean()


def draw_scene(rng: random.Random, count: int | None = None, share: str | None = None) -> tuple[scenes.Scene, "Image"]:
    scene = scenes.sample_scene(rng, count=count, share=share)
    factor = min(1.0, RENDER_LONG_SIDE / max(scene.width, scene.height))
    small = scenes.Scene(
        max(1, round(scene.width * factor)), max(1, round(scene.height * factor)), scene.background,
        tuple(scenes.Shape(s.colour, s.kind, tuple(v * factor for v in s.box)) for s in scene.shapes), scene.fills,
    )
    image = scenes.render(small)
    if rng.random() < 0.3:  # served images are often JPEGs
        from PIL import Image
        import io

        image = Image.open(io.BytesIO(scenes.encode(image, "JPEG", quality=rng.randint(70, 95)))).convert("RGB")
    return scene, image


def make_scene_examples(rng: random.Random, processor: ImageProcessor, count: int | None = None,
                        ground_weight: float = 1.0, look_alike: float = 0.0) -> SceneExamples:
    """A grounded caption, a ground question for every shape, and a caption or a count.

    look_alike: the share of scenes whose 2-3 shapes all have one kind (3 in 4 of them) or one
    colour, where a ground answer must read both words of its phrase (the shipped model boxed
    another shape of the same kind for most of its wrong ground answers)."""
    share = None
    if count is None and look_alike and rng.random() < look_alike:
        share, count = ("kind" if rng.random() < 0.75 else "colour"), rng.randint(2, 3)
    scene, image = draw_scene(rng, count, share)
    rows = [(GROUNDED_CAPTION_PROMPT, scene.grounded_caption())]
    rows += [(GROUND_PROMPT.format(expression=rng.choice(ARTICLES) + s.name), scene.box_text(s)) for s in scene.shapes]
    weights = [1.0] + [ground_weight] * len(scene.shapes) + [1.0]
    if rng.random() < 0.5:
        rows.append((rng.choice(CAPTION_PROMPTS), scene.caption()))
    else:
        rows.append((rng.choice(COUNT_PROMPTS), scene.count()))
    return SceneExamples(processor.resize(image), rows, patch_targets(scene, processor.image_size // TOY_PATCH), weights)


class NoCache:
    """Training attends over the whole fresh sequence at once: nothing to keep between calls."""

    def update(self, layer, start, k, v):
        return k, v


class SharedPrefix:
    """Keys and values of each image's prefix (bos, boi, patches), computed once and read by every
    row of that image, as generation does (model.generate); gradients flow back through both."""

    def __init__(self, image_of_row: torch.Tensor):
        self.image_of_row = image_of_row
        self.prefix: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, layer, start, k, v):
        if start == 0:
            self.prefix[layer] = (k, v)
            return k, v
        pk, pv = self.prefix[layer]
        return torch.cat([pk[self.image_of_row], k], dim=2), torch.cat([pv[self.image_of_row], v], dim=2)



def encode_rows(tokenizer, cfg, rows: list[tuple[str, str]]):
    """-> per row (input ids, token types, targets) of the whole unpadded sequence."""
    eos = cfg.eos_token_ids[0]
    out = []
    for prompt_text, answer_text in rows:
        prompt = tokenizer.encode(prompt_text, add_special_tokens=False)
        answer = tokenizer.encode(answer_text, add_special_tokens=False) + [eos]
        ids, types = build_input_ids(prompt + answer[:-1], cfg)
        # the logit at position i predicts token i + 1: the answer starts after the last prompt token
        out.append((ids, types, [-100] * (len(ids) - len(answer)) + answer))
    return out


def batch_loss(model: CogVLMForCausalLM, tokenizer, examples: list[Example]) -> torch.Tensor:
    """Plain teacher forcing, one whole sequence per row (the reference for scene_batch_loss)."""
    cfg = model.config
    rows = encode_rows(tokenizer, cfg, [(ex.prompt, ex.answer) for ex in examples])
    width = max(len(ids) for ids, _, _ in rows)
    pad = lambda seq, fill: seq + [fill] * (width - len(seq))  # noqa: E731  right padding: causal attention never sees it
    ids = torch.tensor([pad(i, cfg.pad_token_id) for i, _, _ in rows])
    types = torch.tensor([pad(t, 0) for _, t, _ in rows])
    labels = torch.tensor([pad(t, -100) for _, _, t in rows])
    pixels = ImageProcessor(cfg.vision.image_size).normalize(np.stack([ex.pixels for ex in examples]))
    x = model.embed(ids)
    features = model.encode_images(torch.from_numpy(pixels))
    x = torch.cat([x[:, :1], features, x[:, 1 + features.shape[1]:]], dim=1)
    h = model(x, rope_positions(types), vision_expert_mask(types), None, NoCache(), 0)
    picked = labels != -100
    return F.cross_entropy(model.logits(h[picked]), labels[picked], reduction="sum") / picked.sum()


def encode_scenes(model: CogVLMForCausalLM, batch: list[SceneExamples]) -> torch.Tensor:
    pixels = ImageProcessor(model.config.vision.image_size).normalize(np.stack([b.pixels for b in batch]))
    return model.encode_images(torch.from_numpy(pixels))  # [U, boi + patches + eoi, H]


def scene_batch_loss(model: CogVLMForCausalLM, tokenizer, batch: list[SceneExamples], groups: int = 2,
                     features: torch.Tensor | None = None) -> torch.Tensor:
    """The same loss as batch_loss over every row of every scene, but each image's prefix goes
    through the vision tower and the language layers once, and rows of similar length are run
    together (`groups` calls), so little is spent on padding."""
    cfg = model.config
    n = cfg.num_image_tokens  # prefix: bos, boi, patches (n - 1 slots after bos); eoi starts each row
    if features is None:
        features = encode_scenes(model, batch)  # [U, n, H]
    encoded, image_of_row, row_weight = [], [], []
    for u, scene_rows in enumerate(batch):
        for i, row in enumerate(encode_rows(tokenizer, cfg, scene_rows.rows)):
            encoded.append(row)
            image_of_row.append(u)
            row_weight.append(1.0 if scene_rows.weights is None else scene_rows.weights[i])
    first_types = torch.tensor(encoded[0][1])
    prefix_positions = rope_positions(first_types)[:n]
    prefix_vision = vision_expert_mask(first_types)[:n]
    u = len(batch)
    bos = model.embed(torch.full((u, 1), cfg.bos_token_id))
    order = sorted(range(len(encoded)), key=lambda r: len(encoded[r][0]))
    total, count = 0.0, 0.0
    for chunk in np.array_split(np.array(order), groups):
        if not len(chunk):
            continue
        rows = [encoded[r] for r in chunk]
        cache = SharedPrefix(torch.tensor([image_of_row[r] for r in chunk]))
        # the prefix again for each group: its keys and values are recomputed, cheap next to the rows
        model(torch.cat([bos, features[:, :-1]], dim=1), prefix_positions.expand(u, -1), prefix_vision.expand(u, -1), None, cache, 0)
        width = max(len(ids) for ids, _, _ in rows) - n
        pad = lambda seq, fill: seq[n:] + [fill] * (width - len(seq) + n)  # noqa: E731
        ids = torch.tensor([pad(i, cfg.pad_token_id) for i, _, _ in rows])
        positions = torch.stack([torch.nn.functional.pad(rope_positions(torch.tensor(t))[n:], (0, width - len(t) + n)) for _, t, _ in rows])
        labels = torch.tensor([pad(t, -100) for _, _, t in rows])
        x = model.embed(ids)
        x = torch.cat([features[cache.image_of_row, -1:], x[:, 1:]], dim=1)  # eoi's slot holds its feature
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        mask = torch.cat([torch.ones(width, n, dtype=torch.bool), causal], dim=1).expand(len(rows), 1, width, n + width)
        h = model(x, positions, None, mask, cache, n)
        picked = labels != -100
        weight = torch.tensor([row_weight[r] for r in chunk])[:, None].expand(-1, width)[picked]
        losses = F.cross_entropy(model.logits(h[picked]), labels[picked], reduction="none")
        total = total + (losses * weight.to(losses.dtype)).sum()
        count += float(weight.sum())
    return total / count


# ----------------------------------------------------------------------------- evaluation


def evaluate(model, tokenizer, model_dir: Path, seed: int, n: int) -> dict:
    """Greedy answers on n fresh scenes: shapes named and boxed (IoU >= 0.5), ground IoU >= 0.5."""
    from model.api import GenerationSettings, VisualExpertModel
    from model.boxes import parse_boxes_for_phrase, parse_grounding

    model.eval()
    vem = VisualExpertModel(model, tokenizer, model_dir)
    rng = random.Random(seed)
    found = total = ground_ok = ground_total = count_ok = 0
    with torch.no_grad():
        for _ in range(n):
            scene = scenes.sample_scene(rng)
            image = scenes.render(scene)
            pixels = vem.processor.preprocess(image)[None]
            prompts = [GROUNDED_CAPTION_PROMPT, scenes.COUNT_QUESTION]
            prompts += [GROUND_PROMPT.format(expression="the " + s.name) for s in scene.shapes]
            outs = vem.generate(pixels, prompts, image_index=[0] * len(prompts), settings=GenerationSettings(max_new_tokens=128))
            parsed = parse_grounding(outs[0].text, scene.width, scene.height)
            for shape in scene.shapes:
                total += 1
                found += any(b.phrase == shape.name and scenes.iou((b.x0, b.y0, b.x1, b.y1), shape.box) >= 0.5 for b in parsed.boxes)
            count_ok += outs[1].text.strip() == scene.count()
            for shape, out in zip(scene.shapes, outs[2:]):
                ground_total += 1
                boxes = parse_boxes_for_phrase(out.text, shape.name, scene.width, scene.height).boxes
                ground_ok += bool(boxes) and scenes.iou((boxes[0].x0, boxes[0].y0, boxes[0].x1, boxes[0].y1), shape.box) >= 0.5
    model.train()
    return {"grounded": found / total, "ground": ground_ok / ground_total, "count": count_ok / n,
            "example": outs[0].text}


HELD_OUT_SEED = 1_000_000  # the training evaluations use 10_000 + step


def record_eval(model_dir: Path, n: int) -> dict:
    """Measure a chosen checkpoint again on n scenes no training evaluation drew, and record that
    as its training.json "eval" (the one it was chosen by is kept as "selection_eval"): the best
    of many small evaluations overstates the model, and the quality tests' gate reads "eval"."""
    from model.api import VisualExpertModel

    vem = VisualExpertModel.load(model_dir, device="cpu", dtype=torch.float32)
    scores = evaluate(vem.model, vem.tokenizer, model_dir, HELD_OUT_SEED, n)
    path = model_dir / "training.json"
    meta = json.loads(path.read_text())
    meta["selection_eval"] = meta.get("selection_eval", meta["eval"])
    meta["eval"] = {**scores, "scenes": n, "seed": HELD_OUT_SEED}
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta["eval"]


# ----------------------------------------------------------------------------- checkpoints


def write_checkpoint(model: CogVLMForCausalLM, raw_config: dict, out: Path, meta: dict) -> None:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(raw_config, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    write_shards(state, tmp, num_shards=1)
    write_tokenizer("cogvlm", tmp)
    (tmp / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():
        for f in out.iterdir():
            if f.name in {p.name for p in tmp.iterdir()} or f.suffix in (".safetensors", ".json"):
                f.unlink()
    out.mkdir(parents=True, exist_ok=True)
    for f in tmp.iterdir():
        f.replace(out / f.name)
    tmp.rmdir()


def read_checkpoint_state(model_dir: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint write_checkpoint wrote (its keys are the model's own)."""
    from safetensors.torch import load_file

    files = set(json.loads((model_dir / "model.safetensors.index.json").read_text())["weight_map"].values())
    return {k: v for f in sorted(files) for k, v in load_file(str(model_dir / f)).items()}


# ----------------------------------------------------------------------------- the loop


def lr_at(step: int, args) -> float:
    """Linear warmup, then inverse square root: it does not depend on --steps, so the checkpoint
    of step N is the same whichever --steps a run was given (a long run can be cut short). With
    --cooldown N the rate then falls linearly to zero over the last N steps (a resumed run can
    anneal what it has learnt so far without starting again)."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    start = args.steps - args.cooldown
    if args.cooldown and step >= start:
        return args.lr * math.sqrt(args.warmup / max(start, args.warmup)) * (args.steps - step) / args.cooldown
    return args.lr * math.sqrt(args.warmup / step)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m model.toy.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("examples/toy-cogvlm"), help="where the best checkpoint goes")
    p.add_argument("--work", type=Path, default=Path("out/toy-train"), help="latest weights, optimizer state, log")
    p.add_argument("--resume", action="store_true", help="continue from --work")
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--batch", type=int, default=10, help="scenes per step (about 4 rows each)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--cooldown", type=int, default=0, help="steps at the end over which the rate falls linearly to zero (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: a shared machine wastes less on spinning threads)")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-scenes", type=int, default=16)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--vision-hidden", type=int, default=96)
    p.add_argument("--vision-layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=384)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--branch-scale", type=float, default=0.1, help="initial weight of the tower's branch LayerNorms")
    p.add_argument("--freeze-vision", type=int, default=0, help="steps before the tower and adapter train (without the patch probe: 300)")
    p.add_argument("--single-shape", type=int, default=400, help="steps of one-shape scenes first (curriculum)")
    p.add_argument("--image-token-gain", type=float, default=25.0, help="initial scale-up of the adapter's output")
    p.add_argument("--patch-loss", type=float, default=1.0, help="weight of the training-only patch probe's loss (0: none)")
    p.add_argument("--ground-weight", type=float, default=1.0, help="weight of the ground answers' tokens in the loss (the others weigh 1)")
    p.add_argument("--look-alike", type=float, default=0.0, help="share of scenes whose shapes all share a kind or a colour")
    p.add_argument("--init", type=Path, default=None, metavar="DIR", help="start from this checkpoint's weights (fresh optimizer and patch probe) instead of the seeded initialization")
    p.add_argument("--time-steps", type=int, default=0, help="only time this many steps and exit")
    p.add_argument("--record-eval", type=int, default=0, metavar="N", help="no training: evaluate --out's checkpoint on N held-out scenes and record it in its training.json")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.record_eval:
        torch.set_num_threads(args.threads)
        print(json.dumps(record_eval(args.out, args.record_eval)))
        return
    torch.set_num_threads(args.threads)
    raw = toy_config(args)
    cfg = ModelConfig.from_dict(raw)
    args.work.mkdir(parents=True, exist_ok=True)
    write_tokenizer("cogvlm", args.work)
    (args.work / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    tokenizer = load_tokenizer(args.work, None, cfg)
    processor = ImageProcessor(cfg.vision.image_size)
    model = init_model(cfg, args.seed, args.branch_scale, args.image_token_gain)
    if args.init:
        model.load_state_dict(read_checkpoint_state(args.init))
    probe = PatchProbe(cfg.hidden_size)
    named = [*model.named_parameters(), *(("probe." + n, p) for n, p in probe.named_parameters())]
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))
    rng = random.Random(args.seed)
    step, best = 0, -1.0
    state_file = args.work / "state.pt"

    def save_state():
        torch.save({"model": model.state_dict(), "probe": probe.state_dict(), "opt": opt.state_dict(), "rng": rng.getstate(), "step": step, "best": best}, state_file)

    if args.resume and state_file.exists():
        saved = torch.load(state_file, weights_only=False)
        model.load_state_dict(saved["model"])
        probe.load_state_dict(saved["probe"])
        opt.load_state_dict(saved["opt"])
        rng.setstate(saved["rng"])
        step, best = saved["step"], saved["best"]
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters; {cfg.num_image_tokens} image tokens", flush=True)
    model.train()
    log = open(args.work / "log.txt", "a")
    started, window, patch_window = time.time(), [], []
    vision = [p for n, p in model.named_parameters() if ".vision." in n and not n.endswith((".boi", ".eoi"))]
    while step < args.steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        # the language model first learns to read the random (information-keeping) image features;
        # trained from the start, the tower collapses them towards a constant the prior prefers
        for p in vision:
            p.requires_grad_(step >= args.freeze_vision)
        count = 1 if step < args.single_shape else None
        batch = [make_scene_examples(rng, processor, count, args.ground_weight, args.look_alike) for _ in range(args.batch)]
        features = encode_scenes(model, batch)
        loss = scene_batch_loss(model, tokenizer, batch, features=features)
        total = loss
        if args.patch_loss:
            targets = torch.from_numpy(np.stack([b.patch_targets for b in batch]))
            patch_loss = probe.loss(features[:, 1:-1], targets)
            total = loss + args.patch_loss * patch_loss
            patch_window.append(patch_loss.item())
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        opt.step()
        step += 1
        window.append(loss.item())
        if step % 10 == 0:
            probe_text = f" patch {sum(patch_window) / len(patch_window):.4f}" if patch_window else ""
            line = f"step {step} loss {sum(window) / len(window):.4f}{probe_text} lr {lr_at(step, args):.2e} {time.time() - started:.0f}s"
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()
            window, patch_window = [], []
        if args.time_steps and step >= args.time_steps:
            print(f"{(time.time() - started) / step:.2f} s/step")
            return
        if step % args.eval_every == 0 or step == args.steps:
            save_state()
            scores = evaluate(model, tokenizer, args.work, 10_000 + step, args.eval_scenes)
            # boxes first; ties (early on, all zero) go to the better all-round model
            score = min(scores["grounded"], scores["ground"]) + 0.01 * (scores["grounded"] + scores["ground"] + scores["count"])
            line = f"eval step {step}: {json.dumps(scores)}"
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()
            if score > best:
                best = score
                meta = {"step": step, "seed": args.seed, "args": {k: str(v) for k, v in vars(args).items()}, "eval": scores}
                write_checkpoint(model, raw, args.out, meta)
                save_state()  # with the new best, so a resumed run keeps it


if __name__ == "__main__":
    main()
