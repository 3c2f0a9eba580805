"""End-to-end labeling throughput: images/s and how busy the model actors are.

    python benchmarks/pipeline.py [--images 512] [--batch-size 8] [--max-new-tokens 16]

Runs `python -m jobs.label` (its own embedded Ray) on a folder of generated JPEGs with a tiny
random checkpoint on CPU actors. The model actors' busy time is the sum over rows of
`model_seconds` (each row carries its share of its batch's model time); busy share =
busy time / (wall time x actors). Writes benchmarks/results/pipeline.md.
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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORK = os.path.join(HERE, "_work", "pipeline")
sys.path.insert(0, REPO)

from model.tiny import write_tiny_checkpoint  # noqa: E402
from pipeline import schema  # noqa: E402
from pipeline.writer import LABELS_DIR, SHARDS_DIR, STATS_FILE  # noqa: E402


def make_images(n: int) -> str:
    folder = os.path.join(WORK, f"images-{n}")
    if len(glob.glob(os.path.join(folder, "*.jpg"))) == n:
        return folder
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = int(rng.integers(256, 640)), int(rng.integers(256, 640))
        base = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
        img.save(os.path.join(folder, f"{i:06d}.jpg"), quality=85)
    return folder


def run(args, variant: str) -> dict:
    model = str(write_tiny_checkpoint(os.path.join(WORK, f"tiny-{variant}"), variant=variant))
    images = make_images(args.images)
    out = os.path.join(WORK, f"labels-{variant}-{time.time_ns()}")
    cmd = [
        sys.executable, "-m", "jobs.label", "--input", images, "--output", out, "--model", model,
        "--task", "caption", "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size),
        "--actors", str(args.actors),
    ]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ""}
    started = time.monotonic()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process_wall = time.monotonic() - started
    stats = json.load(open(os.path.join(out, STATS_FILE)))
    files = glob.glob(os.path.join(out, SHARDS_DIR, LABELS_DIR, "*.parquet"))
    rows = pa.concat_tables([pq.read_table(f, columns=[schema.STATUS, schema.MODEL_SECONDS, schema.PREPROCESS_SECONDS]) for f in files])
    ok = sum(s == schema.Status.SUCCESS for s in rows.column(schema.STATUS).to_pylist())
    busy = sum(x or 0 for x in rows.column(schema.MODEL_SECONDS).to_pylist())
    prep = sum(x or 0 for x in rows.column(schema.PREPROCESS_SECONDS).to_pylist())
    wall = stats["this_run"]["wall_seconds"]
    return {
        "variant": variant,
        "images": args.images,
        "labelled": ok,
        "dataset_wall_s": round(wall, 2),
        "process_wall_s": round(process_wall, 2),
        "images_per_s": round(ok / wall, 1),
        "model_busy_s": round(busy, 2),
        "model_busy_share": f"{busy / (wall * args.actors):.0%}",
        "preprocess_cpu_s": round(prep, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--variants", default="cogvlm,cogvlm2")
    args = p.parse_args()
    results = [run(args, v) for v in args.variants.split(",")]
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    lines = [
        "# End-to-end labeling (tiny random model, CPU actors)",
        "",
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}. "
        f"`jobs.label --task caption --max-new-tokens {args.max_new_tokens} --batch-size {args.batch_size} "
        f"--actors {args.actors}` on {args.images} generated JPEGs (256-640 px) in a folder. "
        "`dataset_wall_s` is the Ray Data execution; `process_wall_s` adds Ray start-up and model checks.",
        "",
        "| " + " | ".join(results[0]) + " |",
        "|" + "---|" * len(results[0]),
    ]
    lines += ["| " + " | ".join(str(v) for v in r.values()) + " |" for r in results]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "pipeline.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
