"""Image preprocessing and prompt templates, without loading a model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model.config import CheckpointError, ModelConfig
from model.processor import (
    CLIP_MEAN,
    CLIP_STD,
    ImageProcessor,
    apply_template,
    load_tokenizer,
    read_template_version,
)
from model.released_configs import RELEASED_CONFIGS
from tests.images import rgb


def test_from_model_dir_reads_only_config(tiny_dir, tmp_path, variant):
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    processor = ImageProcessor.from_model_dir(tmp_path)
    assert processor.image_size == 56
    assert processor.cross_image_size == (84 if variant == "cogagent" else None)
    with pytest.raises(CheckpointError, match="no config.json"):
        ImageProcessor.from_model_dir(tmp_path / "..")


def test_solid_colour_normalizes_per_channel():
    out = ImageProcessor(56).preprocess(Image.new("RGB", (90, 30), (255, 0, 128)))
    assert out.shape == (3, 56, 56) and out.dtype == np.float32
    expected = (np.array([255, 0, 128], dtype=np.float32) / 255 - CLIP_MEAN) / CLIP_STD
    np.testing.assert_allclose(out.reshape(3, -1), np.repeat(expected[:, None], 56 * 56, axis=1), rtol=1e-6)


def test_resize_is_bicubic_to_a_square_and_channels_first():
    image = rgb(64, 48)
    out = ImageProcessor(32).preprocess(image)
    resized = np.asarray(image.resize((32, 32), Image.BICUBIC), dtype=np.float32) / 255
    np.testing.assert_allclose(out, ((resized - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1), rtol=1e-6, atol=1e-6)


def test_resize_then_normalize_is_preprocess():
    processor, image = ImageProcessor(32), rgb(50, 70)
    resized = processor.resize(image)
    assert resized.shape == (3, 32, 32) and resized.dtype == np.uint8
    np.testing.assert_array_equal(processor.normalize(resized[None])[0], processor.preprocess(image))


def test_template_version_from_config_alone(tiny_dir, tmp_path):
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    assert read_template_version(tmp_path) == "chat"


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_any_mode_becomes_rgb(mode):
    assert ImageProcessor(28).preprocess(rgb(20, 10).convert(mode)).shape == (3, 28, 28)


def test_templates():
    assert apply_template("Describe it.", "base") == "Describe it."
    assert apply_template("Describe it.", "chat") == "Question: Describe it. Answer:"
    assert apply_template("How many?", "vqa") == "Question: How many? Short answer:"
    history = [("What is it?", "A dog."), ("Colour?", "Brown.")]
    assert apply_template("Where?", "chat", history) == (
        "Question: What is it? Answer: A dog.\nQuestion: Colour? Answer: Brown.\nQuestion: Where? Answer:"
    )
    assert apply_template("Where?", "base", history) == "Where?"
    with pytest.raises(ValueError, match="unknown template"):
        apply_template("x", "grounding")


CHAT_PROMPTS = {
    "cogvlm": "Question: hi Answer:",
    "cogvlm2": "Question: hi Answer:",
    "cogagent": " [INST] hi [/INST] ",
    "glm4v": "[gMASK]<sop><|user|>\n<|begin_of_image|><|endoftext|><|end_of_image|>hi<|assistant|>",
}


def test_model_prompt_uses_the_config_template(vem, variant):
    assert vem.build_prompt("hi") == CHAT_PROMPTS[variant]
    if variant != "glm4v":  # GLM-4V has its chat template only
        assert vem.build_prompt("hi", "base") == "hi"
    else:
        with pytest.raises(ValueError, match="unknown template 'base' for glm4v"):
            vem.build_prompt("hi", "base")


def test_text_is_encoded_without_special_tokens(vem, variant):
    ids = vem.tokenizer.encode("Question: hi Answer:", add_special_tokens=False)
    assert vem.config.bos_token_id not in ids and vem.tokenizer.decode(ids) == "Question: hi Answer:"
    assert not set(ids) & set(vem.tokenizer.all_special_ids)


def test_cogagent_templates_keep_their_literal_markup():
    """spec (cogagent.md "Prompts"): `<EOI>` and the spaces around [INST] are ordinary text."""
    history = [("What is it?", "A button."), ("Colour?", "Blue.")]
    agent = lambda q, t, h=(): apply_template(q, t, h, "cogagent")  # noqa: E731
    assert agent("Where?", "chat") == " [INST] Where? [/INST] "
    assert agent("Where?", "chat", history) == (
        " [INST] What is it? [/INST] A button. [INST] Colour? [/INST] Blue. [INST] Where? [/INST] "
    )
    assert agent("How many?", "vqa", history) == "<EOI>Question: How many? Short answer:"
    assert agent("Where?", "chat_old") == "<EOI>Question: Where? Answer:"
    assert agent("Where?", "chat_old", history) == (
        "<EOI>Question: What is it? Answer: A button.\nQuestion: Colour? Answer: Blue.\nQuestion: Where? Answer:"
    )
    assert agent("Where?", "base", history) == "Where?"
    with pytest.raises(ValueError, match="unknown template"):
        apply_template("x", "chat_old")  # CogVLM has no chat_old


def test_cogagent_processor_resizes_both_resolutions_from_the_original():
    processor = ImageProcessor(28, 42)
    image = rgb(90, 60)
    packed = processor.preprocess(image)
    assert packed.shape == processor.pixel_shape == (3, 28 * 28 + 42 * 42)
    low, high = processor.split(packed[None])
    for size, part in ((28, low[0]), (42, high[0])):  # spec: each resized directly, never one from the other
        direct = np.asarray(image.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
        np.testing.assert_allclose(part, ((direct - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(processor.normalize(processor.resize(image)), packed)


def test_vicuna_style_sentencepiece_tokenizer_dir_loads(tmp_path):
    """v1's tokenizer is a separate Llama sentencepiece directory; a tiny one trained here stands in."""
    spm = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Question: what is in the picture? Answer: a dog [[102,341,560,998]]\n" * 50)
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "tokenizer"), vocab_size=300, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, minloglevel=2,
    )
    (tmp_path / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}'
    )
    (tmp_path / "corpus.txt").unlink()
    cfg = ModelConfig.from_dict(RELEASED_CONFIGS["cogvlm-chat-hf"])
    tokenizer = load_tokenizer(tmp_path / "model-without-tokenizer", tmp_path, cfg)
    text = "Question: what is in the picture? Answer:"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids == spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model")).encode(text)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2) and tokenizer.decode(ids) == text
