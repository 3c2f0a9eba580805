"""The training step computes what inference computes: the shared-prefix loss equals plain
teacher forcing over whole sequences, and training data is reproducible for a seed."""

from __future__ import annotations

import math
import random

import pytest
import torch

from model.config import ModelConfig
from model.processor import ImageProcessor, load_tokenizer
from model.tiny import write_tokenizer
from model.toy.train import Example, batch_loss, init_model, lr_at, make_scene_examples, parse_args, scene_batch_loss, toy_config


def small(tmp_path):
    args = parse_args(["--hidden", "32", "--intermediate", "64", "--heads", "2", "--layers", "2",
                       "--vision-hidden", "16", "--vision-layers", "1", "--image-size", "56"])
    cfg = ModelConfig.from_dict(toy_config(args))
    write_tokenizer("cogvlm", tmp_path)
    return args, cfg, load_tokenizer(tmp_path, None, cfg)


def test_shared_prefix_loss_equals_whole_sequence_loss(tmp_path):
    args, cfg, tokenizer = small(tmp_path)
    processor = ImageProcessor(cfg.vision.image_size)
    batch = [make_scene_examples(random.Random(3), processor) for _ in range(3)]
    model = init_model(cfg, seed=0).double()
    rows = [Example(b.pixels, prompt, answer) for b in batch for prompt, answer in b.rows]
    plain = batch_loss(model, tokenizer, rows)
    for groups in (1, 2, 3):
        shared = scene_batch_loss(model, tokenizer, batch, groups=groups)
        torch.testing.assert_close(shared, plain, rtol=1e-6, atol=1e-6)
    # and the gradients agree too (what training actually uses)
    plain.backward()
    grad = lambda p: torch.zeros_like(p) if p.grad is None else p.grad.clone()  # noqa: E731  unused: None
    expected = {n: grad(p) for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    scene_batch_loss(model, tokenizer, batch).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grad(p), expected[name], rtol=1e-5, atol=1e-8, msg=name)


def test_scenes_and_schedule_are_reproducible(tmp_path):
    args, cfg, _ = small(tmp_path)
    processor = ImageProcessor(cfg.vision.image_size)
    a, b = (make_scene_examples(random.Random(7), processor) for _ in range(2))
    assert a.rows == b.rows and (a.pixels == b.pixels).all()
    # the learning rate of a step does not depend on how long the run was meant to be
    assert [lr_at(s, args) for s in (0, 50, 100, 400)] == [lr_at(s, parse_args(["--steps", "10"])) for s in (0, 50, 100, 400)]
    assert lr_at(400, args) == args.lr / 2


@pytest.mark.parametrize(
    "step, expected",
    [
        (399, math.sqrt(100 / 399)),  # before the cooldown: inverse square root
        (400, 0.5),  # its first step keeps the rate it had reached
        (700, 0.25),  # halfway down
        (999, 0.5 / 600),  # the last step
    ],
)
def test_cooldown_falls_linearly_to_zero_over_the_last_steps(step, expected):
    args = parse_args(["--steps", "1000", "--cooldown", "600", "--warmup", "100"])
    assert lr_at(step, args) == pytest.approx(args.lr * expected)


def test_patch_targets_name_the_shape_under_each_patch():
    from model.toy import scenes
    from model.toy.train import BOX_FIELDS, PATCH_CLASSES, PATCH_FIELDS, PatchProbe, patch_targets

    # a 400 x 200 image, grid 4: cells are 100 x 50 pixels
    red = scenes.Shape("red", "circle", (0.0, 0.0, 100.0, 100.0))  # covers cells (0, 0) and (1, 0)
    blue = scenes.Shape("blue", "square", (300.0, 150.0, 340.0, 170.0))  # no cell centre inside: its centre's cell
    scene = scenes.Scene(400, 200, (255, 255, 255), (red, blue), ((214, 40, 40), (37, 87, 214)))
    t = patch_targets(scene, 4)
    col = {name: i for i, name in enumerate(PATCH_FIELDS)}
    on_red = [0 * 4 + 0, 1 * 4 + 0]
    on_blue = [3 * 4 + 3]
    for cell in range(16):
        row = t[cell]
        assert row[col["count"]] == 1  # two shapes, everywhere
        if cell in on_red:
            assert (row[col["colour"]], row[col["kind"]], row[col["rank"]]) == (1 + list(scenes.COLOURS).index("red"), 1 + scenes.KINDS.index("circle"), 1)
            assert list(row[[col[f] for f in BOX_FIELDS]]) == [0, 0, 250, 500]  # scene.box_text(red)
        elif cell in on_blue:
            assert row[col["rank"]] == 2
            assert list(row[[col[f] for f in BOX_FIELDS]]) == [750, 750, 850, 850]
        else:
            assert list(row[:3]) == [0, 0, 0] and all(row[col[f]] == -100 for f in BOX_FIELDS)
    assert scene.box_text(red) == "[[000,000,250,500]]" and scene.box_text(blue) == "[[750,750,850,850]]"
    # the probe's loss is finite with background-only fields skipped, and has a gradient
    probe = PatchProbe(8)
    features = torch.randn(1, 16, 8, requires_grad=True)
    loss = probe.loss(features, torch.from_numpy(t)[None])
    loss.backward()
    assert torch.isfinite(loss) and features.grad.abs().sum() > 0 and len(PATCH_CLASSES) == 4


def test_record_eval_measures_the_checkpoint_again_on_held_out_scenes(tmp_path):
    import json

    from model.toy.train import HELD_OUT_SEED, evaluate, record_eval, write_checkpoint

    args, cfg, tokenizer = small(tmp_path)
    model = init_model(cfg, seed=0)
    raw = toy_config(args)
    write_checkpoint(model, raw, tmp_path / "best", {"step": 5, "eval": {"grounded": 0.95, "ground": 0.92}})
    recorded = record_eval(tmp_path / "best", 2)
    meta = json.loads((tmp_path / "best" / "training.json").read_text())
    assert meta["selection_eval"] == {"grounded": 0.95, "ground": 0.92}  # what it was chosen by
    assert meta["eval"] == recorded and recorded["scenes"] == 2 and recorded["seed"] == HELD_OUT_SEED
    expected = evaluate(model, tokenizer, tmp_path / "best", HELD_OUT_SEED, 2)
    assert {k: recorded[k] for k in expected} == expected
    # a second measurement replaces "eval" and keeps the first selection record
    record_eval(tmp_path / "best", 1)
    assert json.loads((tmp_path / "best" / "training.json").read_text())["selection_eval"] == {"grounded": 0.95, "ground": 0.92}


def test_ground_weight_scales_the_ground_answers_share_of_the_loss(tmp_path):
    """Weighted rows: the loss is the weighted mean over answer tokens, so weight w on the ground
    rows equals repeating them w times."""
    from dataclasses import replace

    args, cfg, tokenizer = small(tmp_path)
    processor = ImageProcessor(cfg.vision.image_size)
    weighted = [make_scene_examples(random.Random(5), processor, ground_weight=3.0)]
    plain = make_scene_examples(random.Random(5), processor)
    assert weighted[0].rows == plain.rows and weighted[0].weights[1:-1] == [3.0] * (len(plain.rows) - 2)
    ground = [r for r in plain.rows if r[0].startswith("Where is")]
    repeated = [replace(plain, rows=plain.rows + ground * 2, weights=None)]
    model = init_model(cfg, seed=0).double()
    torch.testing.assert_close(scene_batch_loss(model, tokenizer, weighted), scene_batch_loss(model, tokenizer, repeated), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("share", ["kind", "colour"])
def test_look_alike_scenes_share_one_word_of_every_phrase(share):
    from model.toy import scenes

    for seed in range(20):
        scene = scenes.sample_scene(random.Random(seed), count=3, share=share)
        kinds, colours = {s.kind for s in scene.shapes}, {s.colour for s in scene.shapes}
        assert (len(kinds), len(colours)) == ((1, 3) if share == "kind" else (3, 1))
    # without it, the world's scenes are drawn exactly as before (seeded evaluations stay comparable)
    assert scenes.sample_scene(random.Random(1)) == scenes.sample_scene(random.Random(1), share=None)


def test_init_starts_from_a_checkpoint_s_weights(tmp_path):
    from model.toy.train import read_checkpoint_state, write_checkpoint

    args, cfg, _ = small(tmp_path)
    model = init_model(cfg, seed=3)
    write_checkpoint(model, toy_config(args), tmp_path / "ckpt", {"step": 1})
    state = read_checkpoint_state(tmp_path / "ckpt")
    fresh = init_model(cfg, seed=4)
    fresh.load_state_dict(state)
    for name, p in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], p, msg=name)
