"""Loading round trips and the errors a job sees for a wrong directory."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.api import GenerationSettings, VisualExpertModel
from model.config import GLM4V, CheckpointError
from model.loading import check_checkpoint_dir, load_model
from model.processor import load_tokenizer


def file_state(model_dir):
    out = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def copy_without_weights(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    return dst


def test_sharded_load_round_trip(tiny_dir):
    model = load_model(tiny_dir, "cpu", torch.float32)
    expected = file_state(tiny_dir)
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for k, t in expected.items():
        assert torch.equal(state[k], t), k
    assert not any(p.requires_grad for p in model.parameters())


def test_bf16_load_gives_bf16_parameters_and_runs(tiny_dir):
    vem = VisualExpertModel.load(tiny_dir, device="cpu", dtype=torch.bfloat16)
    expected = file_state(tiny_dir)
    for k, p in vem.model.state_dict().items():
        assert p.dtype == torch.bfloat16, k
        assert torch.equal(p, expected[k].to(torch.bfloat16)), k
    # official RoPE tables: built in bf16 (test_rope.py); GLM-4's official code builds them in fp32
    assert vem.model.rope_cos.dtype == (torch.float32 if vem.config.variant == GLM4V else torch.bfloat16)
    pixels = torch.zeros(1, *vem.processor.pixel_shape)
    [out] = vem.generate(pixels, [vem.build_prompt("hi")], settings=GenerationSettings(max_new_tokens=3))
    assert 0 < len(out.token_ids) <= 3 or out.finish_reason == "eos"


@pytest.mark.parametrize("layout", ["model.safetensors", "pytorch_model.bin"])
def test_single_file_layouts_load(tiny_dir, tmp_path, layout):
    state = file_state(tiny_dir)
    target = copy_without_weights(tiny_dir, tmp_path / "ckpt")
    if layout.endswith(".safetensors"):
        save_file(state, target / layout)
    else:
        torch.save(state, target / layout)
    model = load_model(target, "cpu", torch.float32)
    assert all(torch.equal(model.state_dict()[k], t) for k, t in state.items())


def test_describe_names_directory_and_config_hash(vem, tiny_dir):
    name, digest = vem.describe().split("@")
    assert name == tiny_dir.name and len(digest) == 8
    assert vem.device == torch.device("cpu") and vem.dtype == torch.float32
    assert vem.template_version == "chat"


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        VisualExpertModel.load(tmp_path / "nope")


def test_missing_config_json(tiny_dir, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, target)
    (target / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has no config.json"):
        VisualExpertModel.load(target)


def test_broken_config_json(tiny_dir, tmp_path, variant):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, target)
    raw = json.loads((target / "config.json").read_text())
    field = "eoi_token_id" if variant == "glm4v" else "hidden_size"  # GLM-4V's config class defaults hidden_size
    del raw[field]
    (target / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=f"lacks the field '{field}'"):
        load_model(target)


def test_no_weights(tiny_dir, tmp_path):
    target = copy_without_weights(tiny_dir, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="has no weights"):
        check_checkpoint_dir(target)
    with pytest.raises(CheckpointError, match="has no weights"):
        VisualExpertModel.load(target)


def test_index_naming_a_missing_shard(tiny_dir, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, target)
    shard = sorted(target.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        check_checkpoint_dir(target)
    with pytest.raises(CheckpointError, match=shard.name):
        load_model(target)


def test_fp16_is_refused(tiny_dir):
    with pytest.raises(ValueError, match="bfloat16"):
        VisualExpertModel.load(tiny_dir, device="cpu", dtype=torch.float16)


def test_tokenizer_defaults_to_the_model_directory(tiny_dir):
    tokenizer = load_tokenizer(tiny_dir)
    assert tokenizer.bos_token_id == json.loads((tiny_dir / "config.json").read_text()).get("bos_token_id")


def test_missing_tokenizer_dir(tiny_dir, tmp_path):
    with pytest.raises(CheckpointError, match="tokenizer directory .* does not exist"):
        VisualExpertModel.load(tiny_dir, tokenizer_dir=tmp_path / "nope")


def test_model_dir_without_tokenizer_asks_for_one(tiny_dir, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, target, ignore=shutil.ignore_patterns("tokenizer*"))
    with pytest.raises(CheckpointError, match="Vicuna-7B v1.5 tokenizer directory"):
        VisualExpertModel.load(target)
    vem = VisualExpertModel.load(target, tokenizer_dir=tiny_dir)  # a separate tokenizer dir works
    assert vem.tokenizer.bos_token_id == vem.config.bos_token_id


def test_broken_tokenizer_dir(tiny_dir, tmp_path):
    bad = tmp_path / "tok"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot load a tokenizer"):
        VisualExpertModel.load(tiny_dir, tokenizer_dir=bad)


def test_tokenizer_of_the_other_variant_is_refused(tiny_dir, variant, tmp_path):
    from model.tiny import write_tiny_checkpoint

    # CogAgent reads Vicuna's tokenizer like v1, so its mismatch is Llama-3's; GLM-4V has no bos
    other = write_tiny_checkpoint(tmp_path / "other", "cogvlm" if variant in ("cogvlm2", "glm4v") else "cogvlm2")
    with pytest.raises(CheckpointError, match="does not fit this checkpoint"):
        VisualExpertModel.load(tiny_dir, tokenizer_dir=other)
