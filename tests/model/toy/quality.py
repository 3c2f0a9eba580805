"""What the shipped toy model's quality tests hold it to.

The training run records the model's quality on held-out scenes in
examples/toy-cogvlm/training.json ("eval": `python -m model.toy.train --out DIR --record-eval N`).
End-to-end tests measure the same things on their own few scenes and must find the model about
as good as that record claims (`floor`): a broken pipeline (boxes in the wrong pixels, swapped
coordinates, a lost EXIF rotation) scores near zero and fails them whatever the model's level.
Whether the record reaches the issue's bar is a test of its own (`BELOW_THE_BAR`), a strict
expected failure until a retrained model's record says it does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

MODEL = Path(__file__).resolve().parents[3] / "examples" / "toy-cogvlm"
BAR = 0.9
# How far below its record a model may score on a test's 8-20 shapes: about two standard errors
# of such a sample at the record's level.
MARGIN = 0.2


def recorded_eval() -> dict:
    return json.loads((MODEL / "training.json").read_text())["eval"]


def meets_the_bar() -> bool:
    scores = recorded_eval()
    return min(scores["grounded"], scores["ground"]) >= BAR


def floor(measure: str) -> float:
    """The least share a test's sample must reach: "grounded" (shapes named and boxed in a
    grounded caption) or "ground" (ground answers boxed), IoU >= 0.5."""
    return max(0.0, recorded_eval()[measure] - MARGIN)


BELOW_THE_BAR = pytest.mark.xfail(
    not meets_the_bar(),
    reason=f"the shipped toy model's recorded quality is below the bar of {BAR}; retrain with model.toy.train",
    strict=True,
)
