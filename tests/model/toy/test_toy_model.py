"""The shipped toy model: released layout, small, loads through the ordinary path, and answers
the prompts jobs.label sends correctly on the bundled scenes (in-process, no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps

from model.api import GenerationSettings, VisualExpertModel
from model.boxes import parse_boxes_for_phrase, parse_grounding
from model.config import COGVLM
from model.loading import check_checkpoint_dir
from pipeline.labeling import TaskSpec
from tests.model.toy.quality import BAR, BELOW_THE_BAR, floor, recorded_eval
from model.toy.scenes import COUNT_QUESTION, iou, join_phrases

REPO = Path(__file__).resolve().parents[3]
MODEL = REPO / "examples" / "toy-cogvlm"
SCENES = REPO / "examples" / "scenes"
SETTINGS = GenerationSettings(max_new_tokens=128)


def bundled_scenes() -> list[tuple[Image.Image, dict]]:
    out = []
    for line in (SCENES / "truth.jsonl").read_text().splitlines():
        truth = json.loads(line)
        image = ImageOps.exif_transpose(Image.open(SCENES / truth["file"]))
        assert image.size == (truth["width"], truth["height"])
        out.append((image, truth))
    return out


@pytest.fixture(scope="module")
def toy() -> VisualExpertModel:
    return VisualExpertModel.load(MODEL, device="cpu", dtype=torch.float32)


def ask(toy: VisualExpertModel, image: Image.Image, spec: TaskSpec, row: dict | None = None) -> list[str]:
    """What jobs.label would ask for this task and row, templated as it does, answered greedily."""
    prompts = [toy.build_prompt(q) for q in spec.queries(row or {})]
    pixels = toy.processor.preprocess(image)[None]
    return [g.text for g in toy.generate(pixels, prompts, image_index=[0] * len(prompts), settings=SETTINGS)]


def test_shipped_checkpoint_is_small_and_in_the_released_v1_layout():
    names = {p.name for p in MODEL.iterdir()}
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert sum(p.stat().st_size for p in MODEL.iterdir()) <= 10 * 2**20
    cfg = check_checkpoint_dir(MODEL)  # every key and shape the v1 layout implies, strictly
    assert cfg.variant == COGVLM and cfg.template_version == "base" and cfg.vocab_size == 259


def test_the_model_answers_in_the_formats_jobs_label_parses(toy):
    image, truth = bundled_scenes()[0]
    [text] = ask(toy, image, TaskSpec("grounded_caption"))
    assert isinstance(text, str) and text == ask(toy, image, TaskSpec("grounded_caption"))[0]  # greedy: repeatable
    parsed = parse_grounding(text, image.width, image.height)
    for box in parsed.boxes:  # whatever it says, boxes come out in this image's pixels
        assert 0 <= box.x0 <= box.x1 < image.width and 0 <= box.y0 <= box.y1 < image.height


def test_captions_counts_and_boxes_on_the_bundled_scenes(toy):
    named = boxed = grounded = shapes = counted = 0
    scenes = bundled_scenes()
    for image, truth in scenes:
        names = [s["name"] for s in truth["shapes"]]
        [caption] = ask(toy, image, TaskSpec("caption"))
        named += caption == join_phrases([f"a {n}" for n in names])
        [count] = ask(toy, image, TaskSpec("vqa", prompt=COUNT_QUESTION))
        counted += count.strip() == str(len(names))
        [text] = ask(toy, image, TaskSpec("grounded_caption"))
        parsed = parse_grounding(text, image.width, image.height)
        answers = ask(toy, image, TaskSpec("ground", phrases=tuple(f"the {n}" for n in names)))
        for shape, answer in zip(truth["shapes"], answers):
            shapes += 1
            boxed += any(b.phrase == shape["name"] and iou((b.x0, b.y0, b.x1, b.y1), shape["box"]) >= 0.5 for b in parsed.boxes)
            [box] = parse_boxes_for_phrase(answer, shape["name"], image.width, image.height).boxes or [None]
            grounded += box is not None and iou((box.x0, box.y0, box.x1, box.y1), shape["box"]) >= 0.5
    assert named >= len(scenes) - 1 and counted >= len(scenes) - 1, (named, counted)
    assert boxed >= floor("grounded") * shapes and grounded >= floor("ground") * shapes, (boxed, grounded, shapes)


@BELOW_THE_BAR
def test_the_shipped_model_meets_the_bar_on_held_out_scenes():
    scores = recorded_eval()
    assert scores["scenes"] >= 40, "record the quality on enough scenes (model.toy.train --record-eval N)"
    assert scores["grounded"] >= BAR and scores["ground"] >= BAR, scores
