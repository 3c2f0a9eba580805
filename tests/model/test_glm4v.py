"""GLM-4V's rules (shared/spec/glm-4v.md): tokenizer, chat template, positions, the GLM block."""

from __future__ import annotations

import json
import lzma
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from model.api import GenerationSettings, VisualExpertModel
from model.generate import layout_batch
from model.glm import apply_partial_rope
from model.glm4_tokenizer import SPLIT_PATTERN, load_glm4_tokenizer, read_ranks
from model.model import KVCache
from model.processor import load_tokenizer, split_prompt_ids
from model.tiny import GLM4_SPECIALS, write_tiny_checkpoint
from tests.images import rgb

# CI puts shared/ beside the clone; COGSCALE_SHARED points elsewhere (e.g. from a worktree)
SHARED = Path(os.environ.get("COGSCALE_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
SHARED_LLAMA3 = SHARED / "tokenizers" / "llama3"
TEXTS = [
    "Describe this image in one sentence.",
    "  two  spaces, tabs\t\tand\n\n\nnewlines \n",
    "这是一张图片。图片里有一只猫坐在沙发上。",
    "émoji 🤖🎉 ok; it's we'LL DON'T 1234567 3.14159",
    "Where is the dog? answer in [[x0,y0,x1,y1]] format.",
    "x" * 200 + " " + "ab" * 50,
    "",
]


@pytest.fixture(scope="module")
def glm_dir(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("glm4v"), "glm4v")


@pytest.fixture(scope="module")
def glm(glm_dir) -> VisualExpertModel:
    return VisualExpertModel.load(glm_dir, device="cpu")


def tiktoken_encoding(rank_file: Path):
    tiktoken = pytest.importorskip("tiktoken")
    return tiktoken.Encoding("ref", pat_str=SPLIT_PATTERN, mergeable_ranks=read_ranks(rank_file), special_tokens={})


def test_tiny_layout_is_the_released_file_layout(glm_dir):
    names = {p.name for p in glm_dir.iterdir()}
    assert {"tokenizer.model", "tokenizer_config.json", "config.json", "model.safetensors.index.json"} <= names
    assert "tokenizer.json" not in names and not any(n.endswith(".py") for n in names)


def test_tokenizer_gives_tiktoken_ids(glm, glm_dir):
    enc = tiktoken_encoding(glm_dir / "tokenizer.model")
    for text in TEXTS:
        ids = glm.tokenizer.encode(text, add_special_tokens=False)
        assert ids == enc.encode(text, disallowed_special=()), text
        assert glm.tokenizer.decode(ids) == text
    assert len(glm.tokenizer) == 256 + 120 + len(GLM4_SPECIALS)
    prefix = glm.tokenizer.convert_tokens_to_ids(["[gMASK]", "<sop>"])
    assert glm.tokenizer.encode("hi") == prefix + glm.tokenizer.encode("hi", add_special_tokens=False)  # as official


def test_real_vocabulary_conversion_equals_tiktoken_and_the_published_tokenizer(tmp_path):
    """Llama-3's tiktoken rank file has GLM-4's format and split regex: our conversion of it must give
    tiktoken's ids and those of Llama-3's own tokenizer.json (shared/tokenizers, see SOURCES.md)."""
    if not SHARED_LLAMA3.is_dir():
        pytest.skip("shared/tokenizers is not beside the checkout")
    tokenizers = pytest.importorskip("tokenizers")
    (tmp_path / "tokenizer.model").write_bytes(lzma.decompress((SHARED_LLAMA3 / "tokenizer.model.xz").read_bytes()))
    specials = {str(128000 + i): {"content": s, "special": True} for i, s in enumerate(GLM4_SPECIALS)}
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "ChatGLM4Tokenizer", "added_tokens_decoder": specials, "eos_token": "<|endoftext|>"})
    )
    ours = load_glm4_tokenizer(tmp_path)
    enc = tiktoken_encoding(tmp_path / "tokenizer.model")
    published = tokenizers.Tokenizer.from_str(lzma.decompress((SHARED_LLAMA3 / "tokenizer.json.xz").read_bytes()).decode())
    assert ours.encode("Hello world", add_special_tokens=False) == [9906, 1917]  # SOURCES.md's check
    for text in TEXTS + ["The quick brown fox. 新年快乐！ 😀\r\n\u00a0x", " [INST] hi [/INST] "]:
        ids = ours.encode(text, add_special_tokens=False)
        assert ids == enc.encode(text, disallowed_special=()) == published.encode(text, add_special_tokens=False).ids, text
        assert ours.decode(ids) == text


def test_no_remote_code_is_ever_loaded(glm_dir, tmp_path, monkeypatch):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("AutoTokenizer must not be asked for GLM-4's remote-code class")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    target = tmp_path / "ckpt"
    shutil.copytree(glm_dir, target)
    (target / "tokenization_chatglm.py").write_text("raise SystemExit('remote code ran')\n")  # as in the release
    tokenizer = load_tokenizer(target)
    assert tokenizer.convert_tokens_to_ids("<|user|>") == json.loads((glm_dir / "config.json").read_text())["eos_token_id"][1]


def test_chat_template_ids_are_the_official_sequence(glm, glm_dir):
    """spec: [gMASK] <sop> <|user|> enc("\\n") boi <|endoftext|> eoi enc(query) <|assistant|>."""
    enc = tiktoken_encoding(glm_dir / "tokenizer.model")
    special = {s: 256 + 120 + i for i, s in enumerate(GLM4_SPECIALS)}
    query = "What is in the picture?"
    ids = glm.tokenizer.encode(glm.build_prompt(query), add_special_tokens=False)
    assert ids == (
        [special["[gMASK]"], special["<sop>"], special["<|user|>"]] + enc.encode("\n")
        + [special["<|begin_of_image|>"], special["<|endoftext|>"], special["<|end_of_image|>"]]
        + enc.encode(query) + [special["<|assistant|>"]]
    )
    history = glm.build_prompt("And now?", history=[("What is it?", "A cat.")])
    assert history == (
        "[gMASK]<sop><|user|>\n<|begin_of_image|><|endoftext|><|end_of_image|>What is it?<|assistant|>\nA cat."
        "<|user|>\nAnd now?<|assistant|>"
    )  # the image stays in the first user turn; no separator between turns


def test_positions_follow_the_unexpanded_prompt(glm):
    """spec example: [gMASK]0 <sop>1 <|user|>2 \\n3 boi4, patches 5, eoi 6, text 7, 8, ..."""
    cfg = glm.config
    lead, text = split_prompt_ids(glm.tokenizer.encode(glm.build_prompt("hi"), add_special_tokens=False), cfg)
    assert len(lead) == 4
    batch = layout_batch(glm.model, [text], [0], lead)
    patches = cfg.num_image_tokens - 2
    assert batch.prefix_positions.tolist() == [0, 1, 2, 3, 4] + [5] * patches
    assert batch.suffix_positions.tolist() == [[6] + list(range(7, 7 + len(text)))]


def test_a_prompt_without_one_image_placeholder_is_refused(glm):
    pixels = np.stack([glm.processor.preprocess(rgb(30, 30))])
    for prompt in ("[gMASK]<sop><|user|>\nno image<|assistant|>", glm.build_prompt("x") + "<|begin_of_image|><|endoftext|><|end_of_image|>"):
        with pytest.raises(ValueError, match="exactly one image placeholder"):
            glm.generate(pixels, [prompt])


def test_partial_interleaved_rope():
    x = torch.arange(8.0).view(1, 1, 1, 8)
    angle = torch.tensor([0.5, 0.5, 2.0, 2.0])  # R = 4 of D = 8 dims rotate, pairs share an angle
    out = apply_partial_rope(x, angle.cos().view(1, 1, 1, 4), angle.sin().view(1, 1, 1, 4))[0, 0, 0]
    c, s, c2, s2 = np.cos(0.5), np.sin(0.5), np.cos(2.0), np.sin(2.0)
    expected = [0 * c - 1 * s, 1 * c + 0 * s, 2 * c2 - 3 * s2, 3 * c2 + 2 * s2, 4, 5, 6, 7]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float32))


def test_glm_block_matches_a_plain_restatement(glm):
    """qkv with bias split [A*D | G*D | G*D], head h reads group h // (A/G), partial interleaved RoPE,
    causal softmax(qk/sqrt(D)), dense; fused gate/up MLP; RMSNorm pre-norm residuals."""
    model, cfg = glm.model, glm.config
    block = model.transformer.encoder.layers[1]
    a, g, d, l = cfg.num_attention_heads, cfg.num_kv_heads, cfg.head_dim, 6
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, l, cfg.hidden_size, generator=gen)
    positions = torch.tensor([[0, 1, 2, 3, 3, 4]])  # a shared id, as image patches have
    cos, sin = model.rope_cos[positions].unsqueeze(1), model.rope_sin[positions].unsqueeze(1)
    y = block(x, cos, sin, None, KVCache.allocate(cfg, 1, l, "cpu", torch.float32), 0, 0)

    def rms(t, w):
        return w * t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps)

    def rotate(t, pos):  # t [L, D]: pairs (2i, 2i+1) of the first D/2 dims turn by pos * theta_i
        out = t.clone()
        for j in range(l):
            for i in range(d // 4):
                theta = pos[j] * 10000 ** (-2 * i / (d // 2))
                u, v = t[j, 2 * i], t[j, 2 * i + 1]
                out[j, 2 * i], out[j, 2 * i + 1] = u * np.cos(theta) - v * np.sin(theta), v * np.cos(theta) + u * np.sin(theta)
        return out

    h = rms(x[0], block.input_layernorm.weight)
    qkv = h @ block.self_attention.query_key_value.weight.T + block.self_attention.query_key_value.bias
    q, k, v = qkv[:, : a * d], qkv[:, a * d : (a + g) * d], qkv[:, (a + g) * d :]
    pos = positions[0].tolist()
    heads = []
    for head in range(a):
        group = head // (a // g)
        qh, kh = rotate(q[:, head * d : (head + 1) * d], pos), rotate(k[:, group * d : (group + 1) * d], pos)
        scores = (qh @ kh.T / d**0.5).masked_fill(torch.ones(l, l, dtype=torch.bool).triu(1), float("-inf"))
        heads.append(scores.softmax(-1) @ v[:, group * d : (group + 1) * d])
    r = x[0] + torch.cat(heads, dim=-1) @ block.self_attention.dense.weight.T
    f = cfg.intermediate_size
    up = rms(r, block.post_attention_layernorm.weight) @ block.mlp.dense_h_to_4h.weight.T
    expected = r + (torch.nn.functional.silu(up[:, :f]) * up[:, f:]) @ block.mlp.dense_4h_to_h.weight.T
    torch.testing.assert_close(y[0], expected, rtol=1e-4, atol=1e-5)


def test_image_tokens_are_scaled_and_in_the_language_width(glm):
    tower = glm.model.vision_tower
    pixels = torch.as_tensor(np.stack([glm.processor.preprocess(rgb(50, 40))]))
    features = glm.model.encode_images(pixels)
    assert features.shape == (1, glm.config.num_image_tokens, glm.config.hidden_size)
    torch.testing.assert_close(features[0, 0], tower.boi[0, 0] / 8)  # spec: boi and eoi divided too
    torch.testing.assert_close(features[0, -1], tower.eoi[0, 0] / 8)
    assert tower.conv.out_channels == glm.config.hidden_size


def test_reply_is_decoded_without_its_leading_newline(glm, monkeypatch):
    newline = glm.tokenizer.encode("\n", add_special_tokens=False)
    word = glm.tokenizer.encode("cat", add_special_tokens=False)
    from model.generate import RowResult

    out = glm._to_generation(RowResult(newline + word + [glm.config.vocab_size - 1], "eos"))  # a padding row id too
    assert out.text == "cat"


def test_generation_stops_at_user_and_observation(glm):
    pixels = np.stack([glm.processor.preprocess(rgb(30, 40))])
    outs = glm.generate(pixels, [glm.build_prompt("hi")], settings=GenerationSettings(max_new_tokens=5))
    assert not set(outs[0].token_ids) & set(glm.config.eos_token_ids)
    assert set(glm.config.eos_token_ids) == {
        glm.tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")
    }
