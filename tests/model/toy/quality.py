"""Whether the shipped toy model is trained well enough for the quality assertions.

The training run records its own evaluation on fresh scenes in examples/toy-cogvlm/training.json;
a shipped checkpoint is measured again on held-out scenes (`python -m model.toy.train --out DIR
--record-eval N`), since the best of many small evaluations overstates it. Quality tests are expected to fail (strict xfail) while that record says the model is below the
issue's bar, and must pass once a retrained model says it meets it; plumbing tests never depend
on this.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

MODEL = Path(__file__).resolve().parents[3] / "examples" / "toy-cogvlm"
BAR = 0.9


def recorded_eval() -> dict:
    return json.loads((MODEL / "training.json").read_text())


def meets_the_bar() -> bool:
    scores = recorded_eval()["eval"]
    return min(scores["grounded"], scores["ground"]) >= BAR


QUALITY = pytest.mark.xfail(
    not meets_the_bar(),
    reason=f"the shipped toy model is under-trained (its training.json eval is below {BAR}); retrain with toy.train",
    strict=True,
)
