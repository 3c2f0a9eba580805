"""The tiny checkpoint writer and the command lines."""

from __future__ import annotations

import hashlib

import pytest

from model import generate, tiny
from tests.images import png


def digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_tiny_checkpoint_is_deterministic_and_small(tmp_path, variant, tiny_dir):
    again = tiny.write_tiny_checkpoint(tmp_path / "again", variant, seed=0)
    assert digest(again) == digest(tiny_dir)
    other_seed = tiny.write_tiny_checkpoint(tmp_path / "seed1", variant, seed=1)
    assert digest(other_seed) != digest(tiny_dir)
    assert sum(p.stat().st_size for p in tiny_dir.iterdir()) < 4_000_000


def test_tiny_command_line(tmp_path, variant, capsys):
    tiny.main([str(tmp_path / "out"), "--variant", variant, "--seed", "2"])
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    assert str(tmp_path / "out") in capsys.readouterr().out


PROMPTS = {
    "cogvlm": "Question: What is it? Answer:",
    "cogvlm2": "Question: What is it? Answer:",
    "cogagent": " [INST] What is it? [/INST] ",
    "glm4v": "[gMASK]<sop><|user|>\n<|begin_of_image|><|endoftext|><|end_of_image|>What is it?<|assistant|>",
}


def test_generate_command_line(tiny_dir, tmp_path, capsys, variant):
    image = tmp_path / "image.png"
    image.write_bytes(png(40, 30))
    generate.main(["--model", str(tiny_dir), "--image", str(image), "--prompt", "What is it?", "--max-new-tokens", "4"])
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith(f"# {tiny_dir.name}@") and repr(PROMPTS[variant]) in header


def test_generate_help(capsys):
    with pytest.raises(SystemExit) as e:
        generate.main(["--help"])
    assert e.value.code == 0 and "--tokenizer" in capsys.readouterr().out


def test_generate_command_line_reports_a_bad_directory(tmp_path, capsys):
    image = tmp_path / "image.png"
    image.write_bytes(png(40, 30))
    with pytest.raises(SystemExit) as e:
        generate.main(["--model", str(tmp_path / "nope"), "--image", str(image), "--prompt", "hi"])
    assert e.value.code == 2 and "nope does not exist" in capsys.readouterr().err
