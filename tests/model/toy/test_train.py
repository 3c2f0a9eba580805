"""The training step computes what inference computes: the shared-prefix loss equals plain
teacher forcing over whole sequences, and training data is reproducible for a seed."""

from __future__ import annotations

import random

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
