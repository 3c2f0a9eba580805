"""Throughput and memory of the visual-expert model, with random weights (no checkpoint needed).

    python benchmarks/model.py                      # CPU: tiny and small configs -> benchmarks/results/model_cpu.md
    python benchmarks/model.py --config real-cogvlm2 --device cuda [--batch 8]
    python benchmarks/model.py --only small-cogagent,small-glm4v --out benchmarks/results/model_cpu_family.md

Configs: CogVLM, CogVLM2, CogAgent (low-res tokens + the high-res cross tower, whose keys/values
are computed once per image) and GLM-4V (GLM-4 block, no experts), tiny, small and real size.

Per config: vision tower (images/s), prefill (tokens/s), cached decode (tokens/s) against a naive
loop that recomputes the whole sequence every step, and peak memory. On CUDA the real-size model
is built on the meta device and materialized in bf16 straight on the GPU; the table adds prefill
TFLOP/s (counted analytically) and decode bandwidth (weight and KV bytes read per step / step time).
`--layers N` cuts both towers to N layers, to smoke-test the real-size path on a small machine.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from torch import nn  # noqa: E402

from model.architectures import build_model  # noqa: E402
from model.config import GLM4V, ModelConfig  # noqa: E402
from model.generate import decode_step, full_logits, layout_batch, prefill, start_cache  # noqa: E402
from model.released_configs import RELEASED_CONFIGS  # noqa: E402
from model.tiny import NORM_WEIGHTS, UNIT_SCALE, tiny_config  # noqa: E402

SMALL = {
    **tiny_config("cogvlm"),
    "hidden_size": 512,
    "intermediate_size": 1376,
    "num_attention_heads": 8,
    "num_hidden_layers": 4,
    "vocab_size": 32000,
    "vision_config": {
        **tiny_config("cogvlm")["vision_config"],
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_heads": 4,
        "num_hidden_layers": 4,
        "image_size": 224,
        "num_positions": 257,
    },
}
# CogAgent at small size: SMALL's low-res side plus a 448 px cross tower (1024 patches) of width 256
SMALL_COGAGENT = {
    **SMALL, "architectures": ["CogAgentForCausalLM"], "cross_hidden_size": 256, "cross_compute_hidden_size": 256,
    "cross_image_size": 448,
    "cross_vision_config": {"width": 256, "layers": 4, "head_width": 64, "mlp_ratio": 2.6667, "patch_size": 14,
                            "embed_dim": 128, "pt_hw_seq_len": 16, "layer_norm_eps": 1e-6},
}
# GLM-4V at small size: SMALL's widths in GLM-4's field names, 2 key/value groups, 448 px (16x16 -> 256 tokens)
SMALL_GLM4V = {
    **tiny_config("glm4v"), "hidden_size": 512, "ffn_hidden_size": 1376, "num_attention_heads": 8, "kv_channels": 64,
    "num_layers": 4, "padded_vocab_size": 32000, "eos_token_id": [2], "pad_token_id": 0, "boi_token_id": 3,
    "eoi_token_id": 4,
    "vision_config": {**SMALL["vision_config"], "image_size": 448, "num_positions": 32 * 32 + 1, "scaling_factor": 8},
}
CONFIGS = {
    "tiny": tiny_config("cogvlm"),
    "tiny-v2": tiny_config("cogvlm2"),
    "tiny-cogagent": tiny_config("cogagent"),
    "tiny-glm4v": tiny_config("glm4v"),
    "small": SMALL,
    "small-v2": {**SMALL, "num_multi_query_heads": 2, "bos_token_id": 1, "eos_token_id": [2], "pad_token_id": 0},
    "small-cogagent": SMALL_COGAGENT,
    "small-glm4v": SMALL_GLM4V,
    "real-cogvlm": RELEASED_CONFIGS["cogvlm-chat-hf"],
    "real-cogvlm2": RELEASED_CONFIGS["cogvlm2-llama3-chat-19B"],
    "real-cogagent": RELEASED_CONFIGS["cogagent-chat-hf"],
    "real-glm4v": RELEASED_CONFIGS["glm-4v-9b"],
}
# (config, extra arguments): the rows-per-image runs ask several questions per image, as the ground task does
CPU_RUNS = [("tiny", []), ("tiny-v2", []), ("small", []), ("small-v2", []),
            ("small", ["--rows-per-image", "4"]), ("small-v2", ["--rows-per-image", "4"]),
            ("tiny-cogagent", []), ("tiny-glm4v", []), ("small-cogagent", []), ("small-glm4v", []),
            ("small-cogagent", ["--rows-per-image", "4"])]
RESULTS = Path(__file__).resolve().parent / "results" / "model_cpu.md"
# dense bf16 peak and memory bandwidth, for the utilization columns
GPU_PEAKS = {"H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12), "A100": (312e12, 2.0e12)}


def random_model(raw: dict, device: torch.device, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """Meta init, then every tensor allocated once on `device` in `dtype` and filled in place."""
    cfg = ModelConfig.from_dict(raw)
    with torch.device("meta"):
        model = build_model(cfg).to(dtype)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(NORM_WEIGHTS):
                p.fill_(1.0)
            elif name.endswith((".bias", "_bias")):
                p.zero_()
            elif name.endswith(UNIT_SCALE):  # embeddings, cls, boi, eoi
                p.normal_(0.0, 1.0, generator=gen)
            else:  # 1/sqrt(fan_in) keeps activations O(1)
                p.normal_(0.0, math.prod(p.shape[1:]) ** -0.5, generator=gen)
    model.init_rope(device)
    return model.eval().requires_grad_(False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def prefill_flops(cfg: ModelConfig, images: int, rows: int, text_len: int) -> float:
    """Matmul FLOPs (2 per multiply-add) of the vision tower(s) on `images` and the prefill of `rows`."""
    v, h = cfg.vision, cfg.hidden_size
    tokens = v.grid**2 + 1
    per_layer = 2 * tokens * (4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size)
    per_layer += 4 * tokens**2 * v.hidden_size  # scores and weighted sum
    vision = v.num_hidden_layers * per_layer + 2 * tokens * v.hidden_size * 3 * v.patch_size**2
    patches = cfg.num_image_tokens - 2
    glu_in = h if cfg.variant == GLM4V else v.hidden_size  # GLM-4V's conv maps into the language width
    if cfg.downsample:
        vision += 2 * patches * v.hidden_size * glu_in * 4
    vision += 2 * patches * (glu_in * h + 3 * h * cfg.intermediate_size)
    attn_width = cfg.num_attention_heads * cfg.head_dim
    expert = 2 * (h * cfg.qkv_size + attn_width * h + 3 * h * cfg.intermediate_size)  # per token per layer
    prefix, suffix = cfg.num_image_tokens, 1 + text_len  # as laid out: prefix once per image
    lm_tokens = images * prefix + rows * suffix
    attended = images * prefix**2 / 2 + rows * suffix * (prefix + suffix / 2)  # causal (query, key) pairs
    lm = cfg.num_hidden_layers * (lm_tokens * expert + 4 * attended * attn_width) + rows * 2 * h * cfg.vocab_size
    x = cfg.cross_vision
    if x is not None:  # CogAgent: high-res tower (all but its last block), cross k/v once per image, cross-attention
        n, w, c = x.grid**2, x.width, cfg.cross_compute_hidden_size
        block = 2 * (n + 1) * (4 * w * w + 3 * w * x.mlp_hidden) + 4 * (n + 1) ** 2 * w
        vision += (x.layers - 1) * block + 2 * n * w * 3 * x.patch_size**2
        vision += cfg.num_hidden_layers * 2 * n * w * 2 * c
        lm += cfg.num_hidden_layers * lm_tokens * (2 * h * c * 2 + 4 * n * c)
    return images * vision + lm


def decode_bytes(cfg: ModelConfig, rows: int, context: int, itemsize: int, images: int = 0) -> float:
    """Bytes one decode step must read: language-expert weights, lm_head, the KV cache, and for
    CogAgent the cross-attention weights and each image's cross keys/values (read once per step)."""
    h = cfg.hidden_size
    per_layer = h * cfg.qkv_size + cfg.num_attention_heads * cfg.head_dim * h + 3 * h * cfg.intermediate_size + 2 * h
    weights = cfg.num_hidden_layers * per_layer + cfg.vocab_size * h + h
    kv = rows * context * cfg.num_hidden_layers * 2 * cfg.num_kv_heads * cfg.head_dim
    if cfg.cross_vision is not None:
        c = cfg.cross_compute_hidden_size
        weights += cfg.num_hidden_layers * (2 * h * c + h)
        kv += images * cfg.num_hidden_layers * 2 * cfg.cross_vision.grid**2 * c
    return (weights + kv) * itemsize


def run_config(name: str, device: torch.device, batch: int, text_len: int, new_tokens: int, layers: int | None,
               naive: bool, rows_per_image: int = 1, repeats: int = 3) -> dict:
    raw = json.loads(json.dumps(CONFIGS[name]))
    if layers:
        raw["num_layers" if "num_layers" in raw else "num_hidden_layers"] = raw["vision_config"]["num_hidden_layers"] = layers
        if "cross_image_size" in raw:  # CogAgent's high-res tower too (the last of its blocks never runs)
            raw["cross_vision_config"] = {**raw.get("cross_vision_config", {}), "layers": layers + 1}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = random_model(raw, device, dtype)
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    size = cfg.vision.image_size
    images = -(-batch // rows_per_image)
    image_of_row = [r // rows_per_image for r in range(batch)]
    pixels = torch.randn(images, 3, size, size, generator=gen).to(device)
    cross_pixels = None
    if cfg.cross_vision is not None:
        xs = cfg.cross_vision.image_size
        cross_pixels = torch.randn(images, 3, xs, xs, generator=gen).to(device)
    texts = [torch.randint(3, 250, (text_len,), generator=gen).tolist() for _ in range(batch)]
    # GLM-4V's prompt has [gMASK] <sop> <|user|> "\n" before the image; the ids themselves do not matter here
    lead = [5, 6, 7, 8] if cfg.variant == GLM4V else None

    def encode():
        features = model.encode_images(pixels)
        return features, (model.encode_cross_images(cross_pixels) if cross_pixels is not None else None)

    def generate_cached():
        (features, cross), t_vision = timed(encode, device)
        batch_ = layout_batch(model, texts, image_of_row, lead)
        cache, valid = start_cache(model, batch_, new_tokens)
        logits, t_prefill = timed(lambda: prefill(model, features, batch_, cache, valid, cross), device)

        def decode():
            nonlocal logits
            positions = batch_.suffix_positions[:, -1] + 1
            for step in range(new_tokens - 1):
                logits = decode_step(model, logits.argmax(-1), positions, cache, valid, batch_.prompt_len + step)
                positions = positions + 1

        _, t_decode = timed(decode, device)
        return (features, cross), t_vision, t_prefill, t_decode

    generate_cached()  # warm-up: allocator, kernels, lazy init
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runs = [generate_cached() for _ in range(repeats)]  # best of: the machine may be shared
    features, cross = runs[0][0]
    t_vision, t_prefill, t_decode = (min(r[i] for r in runs) for i in (1, 2, 3))
    steps = new_tokens - 1
    prompt_tokens = len(lead or [0]) + cfg.num_image_tokens + text_len
    result = {
        "config": name + (f" ({layers} layers)" if layers else ""),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "batch": batch,
        "rows_per_image": rows_per_image,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "vision_images_s": images / t_vision,
        "prefill_tokens_s": batch * prompt_tokens / t_prefill,  # as if every row ran its own image prefix
        "prefill_rows_s": batch / (t_vision + t_prefill),
        "decode_tokens_s": batch * steps / t_decode,
        "decode_step_ms": 1e3 * t_decode / steps,
    }
    if naive:  # recompute the whole sequence every step (image features reused; no KV cache)
        def naive_loop():
            rows = [list(t) for t in texts]
            for _ in range(steps + 1):
                logits = full_logits(model, features, image_of_row, rows, lead, cross)
                for row, token in zip(rows, logits.argmax(-1).tolist()):
                    row.append(token)

        _, t_naive = timed(naive_loop, device)
        result["naive_tokens_s"] = batch * (steps + 1) / t_naive
    if device.type == "cuda":
        result["peak_mem_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
        flops = prefill_flops(cfg, images, batch, text_len)
        result["prefill_TFLOP_s"] = flops / (t_vision + t_prefill) / 1e12
        context = prompt_tokens + new_tokens // 2  # mean keys read per step
        result["decode_GB_s"] = decode_bytes(cfg, batch, context, dtype.itemsize, images) / (t_decode / steps) / 1e9
        peaks = next((v for k, v in GPU_PEAKS.items() if k in result["device"]), None)
        if peaks:
            result["prefill_MFU_%"] = 100 * result["prefill_TFLOP_s"] * 1e12 / peaks[0]
            result["decode_bw_%"] = 100 * result["decode_GB_s"] * 1e9 / peaks[1]
    else:  # whole-process high-water mark; each CPU config runs in its own process
        result["peak_rss_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def number(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def markdown(results: list[dict]) -> str:
    columns = list(dict.fromkeys(k for r in results for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in results:
        cells = [number(r[c]) if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), help="one config; default: every CPU config")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--text-len", type=int, default=16, help="text tokens per prompt")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--layers", type=int, help="override both towers' layer counts")
    parser.add_argument("--rows-per-image", type=int, default=1, help="prompt rows sharing each image")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; each phase reports its best")
    parser.add_argument("--no-naive", action="store_true", help="skip the recompute-everything baseline")
    parser.add_argument("--json", action="store_true", help="print one JSON result (used per CPU config)")
    parser.add_argument("--only", help="comma-separated configs: run only these of the CPU runs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the CPU table goes (default: %(default)s)")
    args = parser.parse_args()

    if args.config:
        result = run_config(args.config, torch.device(args.device), args.batch, args.text_len, args.new_tokens,
                            args.layers, naive=not args.no_naive, rows_per_image=args.rows_per_image,
                            repeats=args.repeats)
        print(json.dumps(result) if args.json else markdown([result]))
        return

    results = []
    chosen = set(args.only.split(",")) if args.only else None
    for name, extra in CPU_RUNS:  # a process each, so peak RSS belongs to that run alone
        if chosen is not None and name not in chosen:
            continue
        cmd = [sys.executable, __file__, "--config", name, "--json", "--batch", str(args.batch),
               "--text-len", str(args.text_len), "--new-tokens", str(args.new_tokens), *extra]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    table = markdown(results)
    header = (
        "# Visual-expert model on CPU (random weights, fp32)\n\n"
        f"torch {torch.__version__}, {torch.get_num_threads()} threads. Batch {args.batch} rows, "
        f"{args.text_len} text tokens each, {args.new_tokens} new tokens. `prefill_tokens_s` counts every row's "
        "full prompt (with `rows_per_image` > 1 the image prefix is computed once per image, so it reads as an "
        "effective rate); `prefill_rows_s` includes the vision tower. Cached phases: best of 3 runs (the "
        "2 cores were shared with other jobs). `naive_tokens_s` (one run) recomputes the whole sequence every "
        "step, image features reused. `peak_rss_MiB` is the process high-water mark.\n\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + table + "\n")
    print(table)
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
