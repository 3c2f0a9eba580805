"""The README's Python snippet runs as written, from the repository root."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from toy.scenes import iou

REPO = Path(__file__).resolve().parent.parent


def python_snippet(heading: str) -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_from_python_snippet_runs_and_boxes_the_shapes():
    code = python_snippet("### From Python")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    truth = json.loads((REPO / "examples/scenes/truth.jsonl").read_text().splitlines()[0])
    assert truth["file"] == "scene-0000.png"
    names = [s["name"] for s in truth["shapes"]]
    assert lines[1:] and [line.split(":")[0] for line in lines[1:]] == names, done.stdout
    for line, shape in zip(lines[1:], truth["shapes"]):
        x0, y0, x1, y1 = (float(v) for v in re.findall(r"-?\d+", line.split(":", 1)[1]))
        assert iou((x0, y0, x1, y1), shape["box"]) >= 0.5, (line, shape)
