"""Quality of the toy model on scenes it never saw, measured through `python -m jobs.label`.

    python benchmarks/toy_quality.py [--scenes 120] [--seed 31337] [--model examples/toy-cogvlm]

Draws fresh scenes from the toy world (toy.scenes; training draws from other seeds), serves
them from a real HTTP server on 127.0.0.1 (PNG, JPEG, and every fifth a JPEG stored sideways
with an EXIF orientation tag), writes a URL list with each row's phrases, and runs the label
job once per task. Scores, all in the original image's pixels:

- grounded_caption: share of true shapes for which the output has a box with the right colour
  and kind (the phrase) and IoU >= 0.5; also the share of captions that are exactly right;
- ground ("Where is the <colour> <kind>?"): share of answers with IoU >= 0.5, and the mean IoU;
- caption: exactly right (every shape, left to right); vqa ("How many shapes are there?"): right.

Writes benchmarks/results/toy_quality.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict

import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORK = os.path.join(HERE, "_work", "toy_quality")
sys.path.insert(0, REPO)

from pipeline import schema  # noqa: E402
from pipeline.writer import LABELS_DIR, SHARDS_DIR  # noqa: E402
from tests.http_server import HttpServer  # noqa: E402
from model.toy import files, scenes  # noqa: E402

TASKS = {
    "grounded_caption": ["--task", "grounded_caption"],
    "ground": ["--task", "ground", "--phrases-col", "objects"],
    "caption": ["--task", "caption"],
    "vqa": ["--task", "vqa", "--prompt", scenes.COUNT_QUESTION],
}


def aspect_band(scene: scenes.Scene) -> str:
    ratio = max(scene.width, scene.height) / min(scene.width, scene.height)
    return "1-2:1" if ratio <= 2 else "2-4:1" if ratio <= 4 else "4-6:1"


def label(task: str, inputs: str, args) -> tuple[list[dict], float]:
    out = os.path.join(WORK, f"labels-{task}-{time.time_ns()}")
    cmd = [sys.executable, "-m", "jobs.label", "--input", inputs, "--output", out, "--model", args.model,
           "--batch-size", str(args.batch_size), "--allow-networks", "127.0.0.1/32", *TASKS[task]]
    env = {**os.environ, "PYTHONPATH": REPO, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ""}
    started = time.monotonic()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - started
    tables = [pq.read_table(p) for p in sorted(glob.glob(os.path.join(out, SHARDS_DIR, LABELS_DIR, "*.parquet")))]
    return pa.concat_tables(tables, promote_options="permissive").to_pylist(), wall


def box_of(b: dict) -> tuple[float, float, float, float]:
    return (b["x0"], b["y0"], b["x1"], b["y1"])


def score(task: str, rows: list[dict], truth: dict[str, files.SceneFile]) -> dict:
    tally = defaultdict(lambda: [0, 0])  # group -> [right, total]
    ious = []
    for row in rows:
        made = truth[row["uid"]]
        scene = made.scene
        groups = ("all", f"aspect {aspect_band(scene)}", "EXIF-rotated" if "exif" in made.name else "upright")
        if row[schema.STATUS] != schema.Status.SUCCESS:
            outcomes = [False] * (len(scene.shapes) if task in ("grounded_caption", "ground") else 1)
        elif task == "grounded_caption":
            boxes = row[schema.BOXES] or []
            outcomes = [any(b["phrase"] == s.name and scenes.iou(box_of(b), s.box) >= 0.5 for b in boxes) for s in scene.shapes]
            tally["exact caption"][0] += row[schema.LABEL_CAPTION] == scene.caption()
            tally["exact caption"][1] += 1
        elif task == "ground":
            boxes = {b["phrase"]: b for b in row[schema.BOXES] or []}
            found = [scenes.iou(box_of(boxes[f"the {s.name}"]), s.box) if f"the {s.name}" in boxes else 0.0 for s in scene.shapes]
            ious += found
            outcomes = [v >= 0.5 for v in found]
        elif task == "caption":
            outcomes = [row[schema.LABEL_CAPTION] == scene.caption()]
        else:
            outcomes = [(row[schema.TEXT] or "").strip() == scene.count()]
        for group in groups:
            tally[group][0] += sum(outcomes)
            tally[group][1] += len(outcomes)
    result = {group: {"right": r, "total": t, "share": r / t if t else None} for group, (r, t) in tally.items()}
    if ious:
        result["mean IoU"] = sum(ious) / len(ious)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=120)
    parser.add_argument("--seed", type=int, default=31337)
    parser.add_argument("--model", default=os.path.join(REPO, "examples", "toy-cogvlm"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tasks", default=",".join(TASKS))
    args = parser.parse_args()
    os.makedirs(WORK, exist_ok=True)
    made = files.fresh_files(args.scenes, args.seed)
    server = HttpServer().start()
    try:
        urls = [server.add_file(f.name, f.data, f.content_type) for f in made]
        inputs = os.path.join(WORK, f"urls-{args.seed}-{args.scenes}.parquet")
        pq.write_table(pa.table({"url": urls, "uid": [f.name for f in made],
                                 "objects": [[f"the {s.name}" for s in f.scene.shapes] for f in made]}), inputs)
        truth = {f.name: f for f in made}
        results = {}
        for task in args.tasks.split(","):
            rows, wall = label(task, inputs, args)
            results[task] = {"wall_seconds": round(wall, 1), **score(task, rows, truth)}
            print(task, json.dumps(results[task]), flush=True)
    finally:
        server.stop()
    write_markdown(args, results, made)


def write_markdown(args, results: dict, made: list) -> None:
    meta = json.load(open(os.path.join(args.model, "training.json"))) if os.path.exists(os.path.join(args.model, "training.json")) else {}
    shapes = sum(len(f.scene.shapes) for f in made)
    lines = [
        "# Toy model quality on unseen scenes",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}.",
        f"Model `{os.path.relpath(args.model, REPO)}` (training step {meta.get('step', '?')}); {len(made)} fresh scenes "
        f"(seed {args.seed}), {shapes} shapes; through `python -m jobs.label` from a URL list on a loopback HTTP server, "
        f"batch size {args.batch_size}, greedy. Command: `python benchmarks/toy_quality.py --scenes {args.scenes} --seed {args.seed}`.",
        "",
        "| task | measure | group | right / total | share |",
        "|---|---|---|---:|---:|",
    ]
    measure = {"grounded_caption": "shape named + box IoU >= 0.5", "ground": "box IoU >= 0.5",
               "caption": "caption exactly right", "vqa": "count right"}
    for task, result in results.items():
        for group, v in result.items():
            if isinstance(v, dict):
                what = "caption exactly right" if group == "exact caption" else measure[task]
                lines.append(f"| {task} | {what} | {'all' if group == 'exact caption' else group} | {v['right']} / {v['total']} | {v['share']:.1%} |")
        if "mean IoU" in result:
            lines.append(f"| {task} | mean IoU | all | | {result['mean IoU']:.3f} |")
    lines += ["", "Wall seconds per job (Ray start included): " + ", ".join(f"{t} {r['wall_seconds']}" for t, r in results.items()), ""]
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", "toy_quality.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    print(path)


if __name__ == "__main__":
    main()
