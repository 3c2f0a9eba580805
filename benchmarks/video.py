"""Video captioning throughput: decoding on CPUs, the model, and jobs.label end to end.

    python benchmarks/video.py [--videos 16] [--seconds 10] [--fps 30] [--size 640x360]
    python benchmarks/video.py --real --device cuda [--batch 4] [--new-tokens 64]
    python benchmarks/video.py --real --layers 1 --device cpu    # smoke test of the real-size path

Default (CPU): encodes --videos H.264 clips, then
  1. decode: `pipeline.video_decode.decode_video` per clip (demux index, decode up to the last sampled
     frame, preprocess), for the chat and base samplings;
  2. end to end: `python -m jobs.label` over the folder with the tiny random cogvlm2-video model;
     videos/s = videos / job wall time; the split between decoding (sum of preprocess_seconds, on
     CPU tasks) and the model (sum of model_seconds, on the actor).
Writes benchmarks/results/video_cpu.md.

--real builds cogvlm2-llama3-caption's real-size config (random bf16 weights, made on the device)
and times 24-frame videos through `generate_videos`: vision tower, prefill, decode tokens/s,
peak GPU memory. Writes benchmarks/results/video_real_<device>.md.
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
from fractions import Fraction
from pathlib import Path

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORK = os.path.join(HERE, "_work", "video")
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, REPO)

from pipeline import schema  # noqa: E402
from pipeline.writer import LABELS_DIR, SHARDS_DIR  # noqa: E402


def encode_clip(path: str, seconds: float, fps: int, width: int, height: int, seed: int) -> None:
    """Moving noise blobs over a gradient: something H.264 has to work at, unlike flat colour."""
    import av

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 128)], -1).astype(np.uint8)
    blobs = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    with av.open(path, mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast"}
        for i in range(int(seconds * fps)):
            frame = np.where(np.roll(blobs, 2 * i, axis=1) > 200, np.roll(blobs, 2 * i, axis=1), base)
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(vf))
        out.mux(stream.encode())


def make_clips(args) -> str:
    width, height = (int(v) for v in args.size.split("x"))
    folder = os.path.join(WORK, f"clips-{args.videos}-{args.seconds}s-{args.fps}fps-{args.size}")
    os.makedirs(folder, exist_ok=True)
    for i in range(args.videos):
        path = os.path.join(folder, f"{i:04d}.mp4")
        if not os.path.exists(path):
            encode_clip(path, args.seconds, args.fps, width, height, seed=i)
    return folder


def bench_decode(folder: str) -> list[dict]:
    from pipeline.video_decode import VideoLimits, decode_video

    files = sorted(glob.glob(os.path.join(folder, "*.mp4")))
    rows = []
    for template in ("chat", "base"):
        times, frames = [], []
        for path in files:
            data = open(path, "rb").read()
            started = time.perf_counter()
            video = decode_video(data, template, VideoLimits(), preview=True)
            times.append(time.perf_counter() - started)
            frames.append(len(video.timestamps))
        rows.append({"sampling": template, "videos": len(files), "ms_per_video": 1000 * float(np.median(times)), "frames_used": int(np.median(frames)), "videos_per_s": len(files) / sum(times)})
    return rows


def bench_job(folder: str, args) -> dict:
    from model.tiny import write_tiny_checkpoint

    model = str(write_tiny_checkpoint(os.path.join(WORK, "tiny-cogvlm2-video"), variant="cogvlm2-video"))
    out = os.path.join(WORK, f"labels-{time.time_ns()}")
    cmd = [
        sys.executable, "-m", "jobs.label", "--input", folder, "--output", out, "--model", model, "--task", "caption",
        "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size),
    ]
    env = {**os.environ, "PYTHONPATH": REPO, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ""}
    started = time.monotonic()
    subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - started
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(os.path.join(out, "stats.json")) as f:
        job_wall = json.load(f)["this_run"]["wall_seconds"]  # from the first stage to the last shard: no Ray start
    table = pa.concat_tables([pq.read_table(f) for f in glob.glob(os.path.join(out, SHARDS_DIR, LABELS_DIR, "*.parquet"))])
    rows = table.to_pylist()
    ok = [r for r in rows if r[schema.STATUS] == schema.Status.SUCCESS]
    decode = sum(r[schema.PREPROCESS_SECONDS] or 0 for r in rows)
    model_s = sum(r[schema.MODEL_SECONDS] or 0 for r in ok)
    return {
        "videos": len(rows), "labelled": len(ok), "wall_s": wall, "job_s": job_wall, "videos_per_s": len(rows) / job_wall,
        "decode_s": decode, "model_s": model_s, "decode_share": decode / (decode + model_s) if decode + model_s else None,
        "frames_per_video": float(np.mean([len(r[schema.FRAME_TIMESTAMPS]) for r in ok])) if ok else 0,
    }


def bench_real(args) -> dict:
    import torch

    from model.api import GenerationSettings, VisualExpertModel
    from model.config import ModelConfig
    from model.model import CogVLMForCausalLM
    from model.released_configs import VIDEO_RELEASED_CONFIGS
    from model.tiny import UNIT_SCALE
    from model.video import CAPTION_PROMPT

    raw = dict(VIDEO_RELEASED_CONFIGS["cogvlm2-llama3-caption"])
    if args.layers:
        raw["num_hidden_layers"] = args.layers
        raw["vision_config"] = {**raw["vision_config"], "num_hidden_layers": args.layers}
    cfg = ModelConfig.from_dict(raw)
    device, dtype = torch.device(args.device), torch.bfloat16
    with torch.device("meta"):
        model = CogVLMForCausalLM(cfg)
    model = model.to(dtype).to_empty(device=device)  # bf16 straight on the device, no fp32 copy
    with torch.no_grad():  # random weights of the scale the tiny checkpoints use
        for name, p in model.named_parameters():
            if name.endswith(UNIT_SCALE):
                p.normal_(0, 1.0)
            elif p.ndim >= 2:
                p.normal_(0, p[0].numel() ** -0.5)
            else:
                p.fill_(1.0 if name.endswith("weight") else 0.0)  # norms 1, biases 0
    model.init_rope(device)
    model.eval().requires_grad_(False)

    class WordFreeTokenizer:  # ids only: the real tokenizer ships with the checkpoint
        def __len__(self):
            return cfg.vocab_size

        def encode(self, text, add_special_tokens=False):
            return [100 + ord(c) % 1000 for c in text]

        def decode(self, ids, skip_special_tokens=True):
            return ""

    config_dir = os.path.join(WORK, "real-config")
    os.makedirs(config_dir, exist_ok=True)
    with open(os.path.join(config_dir, "config.json"), "w") as f:
        json.dump(raw, f)
    vem = VisualExpertModel(model, WordFreeTokenizer(), Path(config_dir))
    frames = torch.randn(24, 3, 224, 224)
    videos = [frames] * args.batch
    prompts = [f"Question: {CAPTION_PROMPT} Answer:"] * args.batch
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        return out, time.perf_counter() - t

    timed(lambda: vem.generate_videos(videos[:1], prompts[:1], template="chat", settings=GenerationSettings(max_new_tokens=2)))  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _, vision_s = timed(lambda: model.encode_videos([f.to(device) for f in videos]))
    _, one_token_s = timed(lambda: vem.generate_videos(videos, prompts, template="chat", settings=GenerationSettings(max_new_tokens=1)))
    _, full_s = timed(lambda: vem.generate_videos(videos, prompts, template="chat", settings=GenerationSettings(max_new_tokens=args.new_tokens)))
    decode_steps = args.new_tokens - 1
    return {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "layers": cfg.num_hidden_layers, "vision_layers": cfg.vision.num_hidden_layers, "batch": args.batch,
        "vision_s": vision_s, "prefill_s": one_token_s, "decode_tokens_per_s": args.batch * decode_steps / max(1e-9, full_s - one_token_s),
        "videos_per_s_prefill_only": args.batch / one_token_s,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }


def machine() -> str:
    import torch

    return f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--size", default="640x360")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=4)
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=16)
    p.add_argument("--real", action="store_true", help="real-size cogvlm2-llama3-caption with random weights")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=4, help="--real: videos per generate call")
    p.add_argument("--new-tokens", dest="new_tokens", type=int, default=64)
    p.add_argument("--layers", type=int, default=0, help="--real: cut both towers to N layers (smoke test)")
    args = p.parse_args()
    os.makedirs(RESULTS, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.real:
        r = bench_real(args)
        lines = [f"# Real-size cogvlm2-llama3-caption, random bf16 weights ({stamp})", "", f"Machine: {machine()}; {r['device']}", "",
                 "| layers (LM / ViT) | batch | vision tower s | prefill s (incl. vision) | videos/s (prefill) | decode tokens/s | peak GiB |",
                 "|---|---:|---:|---:|---:|---:|---:|",
                 f"| {r['layers']} / {r['vision_layers']} | {r['batch']} | {r['vision_s']:.3f} | {r['prefill_s']:.3f} | {r['videos_per_s_prefill_only']:.2f} | {r['decode_tokens_per_s']:.1f} | {r['peak_gib'] if r['peak_gib'] is None else round(r['peak_gib'], 1)} |"]
        path = os.path.join(RESULTS, f"video_real_{args.device}.md")
    else:
        folder = make_clips(args)
        decode = bench_decode(folder)
        job = bench_job(folder, args)
        lines = [
            f"# Video captioning on CPU ({stamp})", "",
            f"Machine: {machine()}. Clips: {args.videos} x {args.seconds:g} s H.264 {args.size} at {args.fps} fps.", "",
            "## Decoding (`pipeline.video_decode.decode_video`: index, decode to the last pick, preprocess, preview strip)", "",
            "| sampling | frames used | ms per video (median) | videos/s (one core) |", "|---|---:|---:|---:|",
            *[f"| {d['sampling']} | {d['frames_used']} | {d['ms_per_video']:.0f} | {d['videos_per_s']:.2f} |" for d in decode],
            "", f"## End to end (`jobs.label`, tiny random cogvlm2-video, batch {args.batch_size}, {args.max_new_tokens} new tokens)", "",
            "| videos | labelled | frames/video | process wall s | job s (no Ray start) | videos/s (job) | decode s (CPU tasks) | model s (actor) | decode share |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {job['videos']} | {job['labelled']} | {job['frames_per_video']:.1f} | {job['wall_s']:.1f} | {job['job_s']:.1f} | {job['videos_per_s']:.2f} | {job['decode_s']:.1f} | {job['model_s']:.1f} | {job['decode_share']:.0%} |",
            "", f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (the machine was shared).",
        ]
        path = os.path.join(RESULTS, "video_cpu.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({"written": path}))


if __name__ == "__main__":
    main()
