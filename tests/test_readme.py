"""The README's Python snippet runs as written, from the repository root."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.model.toy.quality import QUALITY
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


@QUALITY
def test_from_python_snippet_boxes_the_shapes():
    lines = run_snippet()
    truth = json.loads((REPO / "examples/scenes/truth.jsonl").read_text().splitlines()[0])
    assert truth["file"] == "scene-0000.png"
    names = [s["name"] for s in truth["shapes"]]
    assert lines[1:] and [line.split(":")[0] for line in lines[1:]] == names, done.stdout
    for line, shape in zip(lines[1:], truth["shapes"]):
        x0, y0, x1, y1 = (float(v) for v in re.findall(r"-?\d+", line.split(":", 1)[1]))
        assert iou((x0, y0, x1, y1), shape["box"]) >= 0.5, (line, shape)
