"""Parsing CogVLM grounding output: phrases, model values, pixels, caption, problems."""

from __future__ import annotations

import dataclasses
import itertools
from typing import NamedTuple

import pytest

from model.boxes import (
    Box,
    box_to_pixels,
    format_box,
    parse_boxes_for_phrase,
    parse_grounding,
)
from pipeline.schema import BOX_TYPE

DOG = (102, 341, 560, 998)
SOFA = (0, 420, 999, 999)
LEFT = (10, 20, 300, 400)
RIGHT = (500, 20, 800, 400)
SMALL = (100, 100, 200, 200)


class Case(NamedTuple):
    text: str
    phrases: list[str]
    rels: list[tuple[int, int, int, int]]
    caption: str
    problems: int
    pixels: list[tuple[float, float, float, float]] | None = None  # hand-computed, 640x480


GROUNDED = {
    # --- well-formed output -------------------------------------------------------------
    "two phrases": Case(
        "a dog [[102,341,560,998]] on a sofa [[000,420,999,999]] .",
        ["dog", "sofa"], [DOG, SOFA], "a dog on a sofa.", 0,
        pixels=[(65.28, 163.68, 358.4, 479.04), (0.0, 201.6, 639.36, 479.52)],
    ),
    "no space before brackets": Case(
        "A cat[[100,100,200,200]] is lying on a pink blanket[[000,420,999,999]].",
        ["cat", "pink blanket"], [SMALL, SOFA], "A cat is lying on a pink blanket.", 0,
        pixels=[(64.0, 48.0, 128.0, 96.0), (0.0, 201.6, 639.36, 479.52)],
    ),
    "several boxes for one phrase": Case(
        "Two dogs [[010,020,300,400;500,020,800,400]] play in the snow.",
        ["Two dogs", "Two dogs"], [LEFT, RIGHT], "Two dogs play in the snow.", 0,
        pixels=[(6.4, 9.6, 192.0, 192.0), (320.0, 9.6, 512.0, 192.0)],
    ),
    "consecutive groups share the phrase": Case(
        "a dog [[010,020,300,400]][[500,020,800,400]] and a cat [[100,100,200,200]]",
        ["dog", "dog", "cat"], [LEFT, RIGHT, SMALL], "a dog and a cat", 0,
    ),
    "several sentences": Case(
        "A man [[010,020,300,400]] is riding a horse [[500,020,800,400]] on the beach"
        " [[000,420,999,999]]. The sky [[100,100,200,200]] is blue.",
        ["man", "horse", "beach", "sky"], [LEFT, RIGHT, SOFA, SMALL],
        "A man is riding a horse on the beach. The sky is blue.", 0,
    ),
    "several lines": Case(
        "A dog [[102,341,560,998]].\nA cat [[100,100,200,200]] .",
        ["dog", "cat"], [DOG, SMALL], "A dog.\nA cat.", 0,
    ),
    "trailing text after the last box": Case(
        "a dog [[102,341,560,998]] sleeping peacefully in the afternoon sun",
        ["dog"], [DOG], "a dog sleeping peacefully in the afternoon sun", 0,
    ),
    "whitespace inside the brackets": Case(
        "a dog [[ 102, 341 ,560,998 ]] .", ["dog"], [DOG], "a dog.", 0,
    ),
    "values without zero padding": Case(
        "a dog [[102,341,560,998]] on a sofa [[0,420,999,999]]", ["dog", "sofa"], [DOG, SOFA],
        "a dog on a sofa", 0,
    ),
    "punctuation after boxes": Case(
        "a dog [[102,341,560,998]] , a cat [[100,100,200,200]] !",
        ["dog", "cat"], [DOG, SMALL], "a dog, a cat!", 0,
    ),
    # --- phrase rule ---------------------------------------------------------------------
    "prepositional phrase, proper noun": Case(
        "A man [[010,020,300,400]] in front of the Eiffel Tower [[500,020,800,400]].",
        ["man", "Eiffel Tower"], [LEFT, RIGHT], "A man in front of the Eiffel Tower.", 0,
    ),
    "clause after a comma, adjective, possessive": Case(
        "In the image, a brown dog [[010,020,300,400]] sits on the man's lap [[500,020,800,400]]",
        ["brown dog", "man's lap"], [LEFT, RIGHT],
        "In the image, a brown dog sits on the man's lap", 0,
    ),
    "numbers stay, 'of' splits like a noun chunk": Case(
        "a group of people [[010,020,300,400]] next to 3 bikes [[500,020,800,400]]",
        ["people", "3 bikes"], [LEFT, RIGHT], "a group of people next to 3 bikes", 0,
    ),
    "connective without a determiner": Case(
        "a dog [[010,020,300,400]] with cats [[500,020,800,400]] and birds [[100,100,200,200]]",
        ["dog", "cats", "birds"], [LEFT, RIGHT, SMALL], "a dog with cats and birds", 0,
    ),
    "verbs are not recognised": Case(
        "a man wearing sunglasses [[010,020,300,400]]",
        ["man wearing sunglasses"], [LEFT], "a man wearing sunglasses", 0,
    ),
    "single-bracket text is ordinary text": Case(
        "The sign says [open] near a door [[100,100,200,200]].",
        ["door"], [SMALL], "The sign says [open] near a door.", 0,
    ),
    # --- no boxes ------------------------------------------------------------------------
    "empty text": Case("", [], [], "", 0),
    "whitespace only": Case("  \n\t ", [], [], "", 0),
    "text without boxes": Case("A dog on a sofa .", [], [], "A dog on a sofa.", 0),
    # --- boxes without a phrase ----------------------------------------------------------
    "box at the very start": Case(
        "[[102,341,560,998]] a dog on a sofa", [""], [DOG], "a dog on a sofa", 1,
    ),
    "box only": Case("[[102,341,560,998]]", [""], [DOG], "", 1),
    # --- malformed brackets: the whole group is dropped ------------------------------------
    "three values": Case(
        "a dog [[102,341,560]] on a sofa [[000,420,999,999]]",
        ["sofa"], [SOFA], "a dog on a sofa", 1,
    ),
    "five values": Case(
        "a dog [[102,341,560,998,100]] on a sofa [[000,420,999,999]]",
        ["sofa"], [SOFA], "a dog on a sofa", 1,
    ),
    "closed with a single bracket": Case(
        "a dog [[102,341,560,998] on a sofa [[000,420,999,999]]",
        ["sofa"], [SOFA], "a dog on a sofa", 1,
    ),
    "opened with a single bracket": Case(
        "a dog [102,341,560,998]] on a sofa", [], [], "a dog on a sofa", 1,
    ),
    "stray closing brackets": Case(
        "a dog 102,341,560,998]] on a sofa", [], [], "a dog on a sofa", 1,
    ),
    "stray closing brackets after a group": Case(
        "a dog [[102,341,560,998]] 5,6]] on a sofa", ["dog"], [DOG], "a dog on a sofa", 1,
    ),
    "box split across lines": Case(
        "a dog [[102,341,\n560,998]] here", [], [], "a dog\nhere", 2,
    ),
    "letters instead of numbers": Case(
        "a dog [[a,b,c,d]] on a sofa [[000,420,999,999]]", ["sofa"], [SOFA], "a dog on a sofa", 1,
    ),
    "negative value": Case("a dog [[-10,341,560,998]] here", [], [], "a dog here", 1),
    "decimal values": Case("a dog [[0.1,0.3,0.5,0.9]] here", [], [], "a dog here", 1),
    "extra brackets": Case("a dog [[[102,341,560,998]]] on a sofa", [], [], "a dog on a sofa", 1),
    "nested group": Case(
        "a dog [[102,341,[[000,420,999,999]]]] on a sofa", [], [], "a dog on a sofa", 2,
    ),
    "unclosed at the end (truncated generation)": Case(
        "a dog [[102,341,560,998]] on a sofa [[000,42", ["dog"], [DOG], "a dog on a sofa", 1,
    ),
    "unclosed before more text": Case(
        "a dog [[102,341 on a sofa [[000,420,999,999]]", ["sofa"], [SOFA], "a dog on a sofa", 1,
    ),
    "unclosed before a line break": Case(
        "a dog [[102,341,560,998\na cat [[100,100,200,200]]", ["cat"], [SMALL], "a dog\na cat", 1,
    ),
    # --- readable brackets, bad boxes: only the bad box is dropped -------------------------
    "value above 999": Case(
        "a dog [[102,341,1000,998]] on a sofa [[000,420,999,999]]",
        ["sofa"], [SOFA], "a dog on a sofa", 1,
    ),
    "value above 999 beside a good box": Case(
        "two dogs [[010,020,300,400;500,020,1200,400]]", ["two dogs"], [LEFT], "two dogs", 1,
    ),
    "empty box after a separator": Case("a dog [[102,341,560,998;]]", ["dog"], [DOG], "a dog", 1),
    "zero width": Case("a pole [[100,200,100,400]] stands", [], [], "a pole stands", 1),
    # --- reversed corners: swapped, reported ------------------------------------------------
    "both corners reversed": Case("a dog [[560,998,102,341]]", ["dog"], [DOG], "a dog", 1),
    "x reversed": Case("a dog [[560,341,102,998]]", ["dog"], [DOG], "a dog", 1),
}


@pytest.mark.parametrize("case", GROUNDED.values(), ids=GROUNDED.keys())
def test_parse_grounding(case: Case):
    width, height = 640, 480
    parsed = parse_grounding(case.text, width, height)

    assert [b.phrase for b in parsed.boxes] == case.phrases
    assert [(b.x0_rel, b.y0_rel, b.x1_rel, b.y1_rel) for b in parsed.boxes] == case.rels
    assert parsed.caption == case.caption
    assert len(parsed.problems) == case.problems, parsed.problems
    pixels = [(b.x0, b.y0, b.x1, b.y1) for b in parsed.boxes]
    assert pixels == [box_to_pixels(rel, width, height) for rel in case.rels]
    if case.pixels is not None:
        assert pixels == [pytest.approx(p) for p in case.pixels]


REFERRING = {
    "box only": ("[[102,341,560,998]]", [DOG], "", 0),
    "several boxes": ("[[010,020,300,400;500,020,800,400]]", [LEFT, RIGHT], "", 0),
    "box inside a sentence": ("It is at [[102,341,560,998]] .", [DOG], "It is at.", 0),
    "two groups": ("[[010,020,300,400]] and [[500,020,800,400]]", [LEFT, RIGHT], "and", 0),
    "malformed box": ("[[102,341,560]]", [], "", 1),
    "empty answer": ("", [], "", 1),
    "answer without a box": ("I cannot find it.", [], "I cannot find it.", 1),
}


@pytest.mark.parametrize(("text", "rels", "caption", "problems"), REFERRING.values(),
                         ids=REFERRING.keys())
def test_parse_boxes_for_phrase(text, rels, caption, problems):
    parsed = parse_boxes_for_phrase(text, "  the red car ", 640, 480)

    assert [b.phrase for b in parsed.boxes] == ["the red car"] * len(rels)
    assert [(b.x0_rel, b.y0_rel, b.x1_rel, b.y1_rel) for b in parsed.boxes] == rels
    assert parsed.caption == caption
    assert len(parsed.problems) == problems, parsed.problems


def test_problems_name_the_group_and_what_was_done():
    parsed = parse_grounding(
        "a dog [[102,341,560]] on a sofa [[999,999,000,420]] and [[1,2,3,4", 640, 480
    )
    dropped, swapped, unclosed = parsed.problems
    assert "[[102,341,560]]" in dropped and "'dog'" in dropped and "dropped" in dropped
    assert "[[999,999,000,420]]" in swapped and "swapped" in swapped
    assert "[[1,2,3,4" in unclosed and "never closed" in unclosed


PIXELS = [
    (DOG, 640, 480, (65.28, 163.68, 358.4, 479.04)),
    ((0, 0, 999, 999), 1000, 1000, (0.0, 0.0, 999.0, 999.0)),
    ((500, 500, 999, 999), 490, 490, (245.0, 245.0, 489.51, 489.51)),
    ((250, 100, 750, 900), 4000, 3000, (1000.0, 300.0, 3000.0, 2700.0)),
    ((0, 0, 1, 1), 1, 1, (0.0, 0.0, 0.001, 0.001)),
]


@pytest.mark.parametrize(("rel", "width", "height", "expected"), PIXELS)
def test_box_to_pixels(rel, width, height, expected):
    assert box_to_pixels(rel, width, height) == pytest.approx(expected)


FORMATTED = [
    ((65.28, 163.68, 358.4, 479.04), 640, 480, "[[102,341,560,998]]"),
    ((0, 0, 640, 480), 640, 480, "[[000,000,999,999]]"),
    ((-5, -5, 700, 500), 640, 480, "[[000,000,999,999]]"),  # clamped to the image
    ((10, 20, 30, 40), 1000, 1000, "[[010,020,030,040]]"),
    ((0.4, 0.6, 1.4, 1.6), 1000, 1000, "[[000,001,001,002]]"),  # nearest, not floor
]


@pytest.mark.parametrize(("pixels", "width", "height", "expected"), FORMATTED)
def test_format_box(pixels, width, height, expected):
    assert format_box(*pixels, width, height) == expected


@pytest.mark.parametrize(
    ("width", "height"), [(490, 490), (640, 480), (1000, 1000), (333, 777), (4000, 3000)]
)
def test_format_then_parse_round_trip(width, height):
    # Within 1 px up to 1000 px; beyond that one model step (size / 1000) is more than a pixel.
    tolerance = max(1.0, max(width, height) / 1000)
    fractions = [0.0, 0.013, 0.25, 0.5001, 0.777, 0.998, 1.0]
    for fx0, fx1 in itertools.combinations(fractions, 2):
        for fy0, fy1 in itertools.combinations(fractions[::2], 2):
            box = (fx0 * width, fy0 * height, fx1 * width, fy1 * height)
            parsed = parse_grounding(f"a thing {format_box(*box, width, height)}", width, height)
            assert not parsed.problems
            (found,) = parsed.boxes
            assert (found.x0, found.y0, found.x1, found.y1) == pytest.approx(box, abs=tolerance)


@pytest.mark.parametrize(
    "call",
    [
        lambda: parse_grounding("a dog [[1,2,3,4]]", 0, 480),
        lambda: parse_boxes_for_phrase("[[1,2,3,4]]", "dog", 640, -1),
        lambda: box_to_pixels((0, 0, 1000, 10), 640, 480),
        lambda: format_box(10, 10, 5, 20, 640, 480),
        lambda: format_box(0, 0, 5, 5, 0, 0),
    ],
    ids=["parse size", "phrase size", "rel above 999", "reversed pixels", "format size"],
)
def test_caller_errors_raise(call):
    with pytest.raises(ValueError):
        call()


def test_box_fields_match_the_row_schema():
    assert [f.name for f in dataclasses.fields(Box)] == [f.name for f in BOX_TYPE]


def test_grounded_operation_reads_boxes_and_points_after_its_label():
    from model.boxes import parse_grounded_operation

    text = "Plan: tap it.\nNext Action: tap.\nGrounded Operation: tap [[500,250]]; then drag [[010,020,030,040;050,060]] [[7,7,7]]"
    parsed = parse_grounded_operation(text, 200, 100)
    assert [(b.phrase, b.x0, b.y0, b.x1, b.y1) for b in parsed.boxes] == [
        ("tap", 100.0, 25.0, 100.0, 25.0),  # a point: a box with no extent
        ("then drag", 2.0, 2.0, 6.0, 4.0),
        ("then drag", 10.0, 6.0, 10.0, 6.0),
    ]
    assert len(parsed.problems) == 1 and "expected 4 numbers, got 3" in parsed.problems[0]
    assert parsed.caption == "Plan: tap it.\nNext Action: tap.\nGrounded Operation: tap; then drag"


# --- against drawn shapes: the true boxes of toy scenes, not strings -------------------------


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (96, 96), (1200, 200), (200, 1200), (4000, 3000), (333, 777)])
def test_grounded_captions_of_drawn_scenes_parse_back_onto_the_shapes(size):
    """A caption written from each shape's drawn box parses back to that shape's name and pixels:
    within the 1/1000 rounding of the format, and onto the shape's own filled pixels."""
    import random

    import numpy as np

    from model.toy import scenes

    rng = random.Random(size[0] * 7919 + size[1])
    for _ in range(5):
        scene = scenes.sample_scene(rng, size, count=3)
        parsed = parse_grounding(scene.grounded_caption(), scene.width, scene.height)
        assert parsed.problems == ()
        assert [b.phrase for b in parsed.boxes] == [s.name for s in scene.shapes]
        pixels = np.asarray(scenes.render(scene))
        for box, shape in zip(parsed.boxes, scene.shapes):
            got = (box.x0, box.y0, box.x1, box.y1)
            tolerance = [size / 1000 for size in (scene.width, scene.height) * 2]
            assert all(abs(g - t) <= tol for g, t, tol in zip(got, shape.box, tolerance)), (got, shape.box)
            assert scenes.iou(got, shape.box) > 0.95
            # the parsed box, in the image's pixels, holds the shape's colour and its centre is filled
            x0, y0, x1, y1 = (round(v) for v in got)
            inside = pixels[y0:y1, x0:x1].reshape(-1, 3)
            fill = np.array(scene.fills[scene.shapes.index(shape)])
            assert (np.abs(inside.astype(int) - fill).sum(-1) < 10).mean() > 0.4
            cy, cx = round((shape.box[1] + shape.box[3]) / 2), round((shape.box[0] + shape.box[2]) / 2)
            assert np.abs(pixels[min(cy, scene.height - 1), cx].astype(int) - fill).sum() < 10
