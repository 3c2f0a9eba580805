"""The README's Python snippet runs as written, from the repository root."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.model.toy.quality import floor
from model.toy.scenes import iou

REPO = Path(__file__).resolve().parent.parent
BOX_LINE = re.compile(r"^(.*): \((\d+), (\d+)\) - \((\d+), (\d+)\)$")


def python_snippet(heading: str) -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_snippet() -> list[str]:
    code = python_snippet("### From Python")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


def test_from_python_snippet_runs_as_written():
    lines = run_snippet()
    assert lines, "the snippet prints the model's text first"
    for line in lines:  # the text, then one line per parsed box, in pixels of the 640 x 480 scene
        if m := BOX_LINE.match(line):
            x0, y0, x1, y1 = (float(v) for v in m.groups()[1:])
            assert 0 <= x0 <= x1 < 640 and 0 <= y0 <= y1 < 480, line


def test_from_python_snippet_boxes_the_shapes():
    lines = run_snippet()
    truth = json.loads((REPO / "examples/scenes/truth.jsonl").read_text().splitlines()[0])
    assert truth["file"] == "scene-0000.png"
    said = [(m.group(1), tuple(float(v) for v in m.groups()[1:])) for m in map(BOX_LINE.match, lines[1:]) if m]
    boxed = sum(any(name == shape["name"] and iou(box, shape["box"]) >= 0.5 for name, box in said) for shape in truth["shapes"])
    assert boxed >= floor("grounded") * len(truth["shapes"]), lines
