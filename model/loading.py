"""Load a checkpoint directory (config.json + weights) into its variant's module, strictly.

The model is built on the meta device and every tensor goes straight from the file to its target
device and dtype, so a bf16 load never holds an fp32 copy of the model. Any missing, unexpected
or misshapen key is an error naming the keys: the checkpoint wins, nothing loads partially.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from torch import nn

from model.architectures import build_model
from model.config import CheckpointError, ModelConfig

WEIGHT_LAYOUTS = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)
# spec: deterministic buffers some checkpoints carry; we compute them ourselves. CogAgent's cross tower
# stores its 2-D RoPE tables (vit.model.rope.freqs_*), GLM-4V its transformer.rotary_pos_emb.inv_freq
IGNORED_SUFFIX = (".rotary_emb.inv_freq", ".rope.freqs_cos", ".rope.freqs_sin", "rotary_pos_emb.inv_freq")
LISTED_KEYS = 10  # names shown per kind of mismatch


def default_device_and_dtype(device=None, dtype=None) -> tuple[torch.device, torch.dtype]:
    """cuda + bf16 when a GPU is there, else cpu + fp32; fp16 is refused."""
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype == torch.float16:  # spec: fp16 overflows in this model family
        raise ValueError("float16 overflows in CogVLM models (NaN/inf); use bfloat16 on GPUs, float32 on CPU")
    return device, dtype


def weight_files(model_dir: Path) -> list[Path]:
    for name in WEIGHT_LAYOUTS:
        path = model_dir / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path]
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
            shards = sorted({model_dir / f for f in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"cannot read the shard index {path}: {e!r}") from None
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise CheckpointError(f"{path} lists shards that are not in {model_dir}: {', '.join(missing)}")
        return shards
    raise CheckpointError(f"{model_dir} has no weights: expected one of {', '.join(WEIGHT_LAYOUTS)}")


def index_tensors(files: list[Path], stack: ExitStack) -> dict[str, tuple[tuple[int, ...], Callable]]:
    """name -> (shape, read) over all shards, reading headers only; handles stay open in `stack`."""
    found: dict[str, tuple[tuple[int, ...], Callable]] = {}
    for path in files:
        try:
            if path.suffix == ".safetensors":
                handle = stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
                entries = {k: (tuple(handle.get_slice(k).get_shape()), _reader(handle, k)) for k in handle.keys()}
            else:  # pickles only through the restricted unpickler; mmap keeps tensors on disk until read
                tensors = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
                entries = {k: (tuple(t.shape), _reader(tensors, k)) for k, t in tensors.items()}
        except Exception as e:  # a truncated or foreign file: say which
            raise CheckpointError(f"cannot read weights from {path}: {type(e).__name__}: {e}") from None
        for name in entries:
            if name in found:
                raise CheckpointError(f"tensor {name} appears in more than one shard ({path.name})")
        found.update(entries)
    return {k: v for k, v in found.items() if not k.endswith(IGNORED_SUFFIX)}


def _reader(source, key: str) -> Callable[[], torch.Tensor]:
    if isinstance(source, dict):
        return lambda: source[key]
    return lambda: source.get_tensor(key)


def check_layout(expected: dict[str, tuple], found: dict[str, tuple], what: str) -> None:
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    wrong = sorted(
        f"{k}: checkpoint {list(found[k])}, expected {list(expected[k])}"
        for k in expected.keys() & found.keys()
        if tuple(found[k]) != tuple(expected[k])
    )
    problems = [
        f"{label} ({len(items)}): " + ", ".join(items[:LISTED_KEYS]) + (" ..." if len(items) > LISTED_KEYS else "")
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
        if items
    ]
    if problems:
        raise CheckpointError(f"{what} does not match the layout its config.json implies: " + "; ".join(problems))


def check_checkpoint_dir(model_dir: str | Path) -> ModelConfig:
    """Everything load_model checks (config, weight files, every key and shape), reading only
    config.json and the weight files' headers: seconds, not minutes, for a job to fail fast."""
    with ExitStack() as stack:
        cfg, _, _ = open_checked(Path(model_dir), stack)
    return cfg


def load_model(model_dir: str | Path, device=None, dtype=None, rope_precision: str = "official") -> nn.Module:
    """rope_precision: how the RoPE tables are built, one of ROPE_PRECISIONS (CogVLMForCausalLM.init_rope)."""
    device, dtype = default_device_and_dtype(device, dtype)
    with ExitStack() as stack:
        _, model, found = open_checked(Path(model_dir), stack)
        state = {k: read().to(device=device, dtype=dtype) for k, (_, read) in found.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.init_rope(device, dtype, rope_precision)  # non-persistent buffers were left on meta
    return model.eval().requires_grad_(False)


def open_checked(model_dir: Path, stack: ExitStack):
    """-> (config, the model on the meta device, name -> (shape, read)) once the layout matches."""
    cfg = ModelConfig.from_json(model_dir)
    with torch.device("meta"):
        model = build_model(cfg)
    expected = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    found = index_tensors(weight_files(model_dir), stack)
    check_layout(expected, {k: shape for k, (shape, _) in found.items()}, f"{cfg.variant} checkpoint {model_dir}")
    return cfg, model, found
