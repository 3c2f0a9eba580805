"""Token ids and decoded text on the real Llama-2 (Vicuna) and Llama-3 vocabularies equal the official ones.

The files come from ../shared/tokenizers (beside the repository, as CI lays it out), xz-decompressed once
per session. `data/official_tokenization.json` holds what the official tokenizers of transformers 4.40.2
gave on them (recorded by record_official_tokenization.py; 4.42.4 and 4.47.1 give the same).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import random
import re
import shutil
from pathlib import Path

import pytest

from model.config import CheckpointError, ModelConfig
from model.processor import apply_template, load_tokenizer
from model.released_configs import RELEASED_CONFIGS
from model.tokenization import FastTokenizer, SentencePieceTokenizer, open_tokenizer, read_tokenizer_config

# CI lays shared/ beside the clone; COGSCALE_SHARED points elsewhere (a git worktree, say)
SHARED_TOKENIZERS = Path(os.environ.get("COGSCALE_SHARED", Path(__file__).resolve().parents[2].parent / "shared")) / "tokenizers"
RECORDED = json.loads((Path(__file__).parent / "data" / "official_tokenization.json").read_text(encoding="utf-8"))
SHA256 = {  # SOURCES.md, of the decompressed files
    "llama2/tokenizer.model": "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347",
    "llama3/tokenizer.json": "c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78",
}
LLAMA2_SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2}


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    """A directory with llama2/ and llama3/ as a user would have them (decompressed, configs beside)."""
    if not SHARED_TOKENIZERS.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED_TOKENIZERS} is missing: CI lays shared/ beside the repository")
        pytest.skip(f"no {SHARED_TOKENIZERS} beside this checkout")
    out = tmp_path_factory.mktemp("real-tokenizers")
    for name, digest in SHA256.items():
        target = out / name
        target.parent.mkdir(exist_ok=True)
        data = lzma.decompress((SHARED_TOKENIZERS / f"{name}.xz").read_bytes())
        assert hashlib.sha256(data).hexdigest() == digest, f"{name} is not the file SOURCES.md describes"
        target.write_bytes(data)
        for config in (SHARED_TOKENIZERS / target.parent.name).glob("*.json"):
            shutil.copyfile(config, target.parent / config.name)
    return out


@pytest.fixture(scope="module")
def vicuna(real) -> SentencePieceTokenizer:
    return load_tokenizer("unused", real / "llama2", ModelConfig.from_dict(RELEASED_CONFIGS["cogvlm-chat-hf"]))


@pytest.fixture(scope="module")
def llama3(real) -> FastTokenizer:
    return load_tokenizer("unused", real / "llama3", ModelConfig.from_dict(RELEASED_CONFIGS["cogvlm2-llama3-chat-19B"]))


@pytest.fixture(scope="module")
def engines(real):
    """sentencepiece on the Llama-2 model as shipped (dummy prefix on) and with the prefix switched
    off through protobuf, the way transformers' legacy=False does it (our code appends bytes instead)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    proto = (real / "llama2" / "tokenizer.model").read_bytes()
    model = sentencepiece_model_pb2.ModelProto.FromString(proto)
    model.normalizer_spec.add_dummy_prefix = False
    return spm.SentencePieceProcessor(model_proto=proto), spm.SentencePieceProcessor(model_proto=model.SerializeToString())


def official_llama2_ids(text: str, plain, no_prefix) -> list[int]:
    """The slow LlamaTokenizer's `legacy: false` ids, restated on sentencepiece's own encoders: "▁" reads
    as a space; `<s>`, `</s>`, `<unk>` written in the text are those tokens; the text before the first
    of them is encoded as sentencepiece encodes a sentence (one dummy "▁" in front); text after one
    gets a "▁" only from its own leading space."""
    parts = re.split("(<unk>|<s>|</s>)", text.replace("\u2581", " "))
    ids: list[int] = []
    for i, part in enumerate(parts):
        if i % 2:
            ids.append(LLAMA2_SPECIALS[part])
        elif part and i == 0:
            ids += plain.encode(part)
        elif part.startswith(" "):
            ids += plain.encode(part[1:]) if len(part) > 1 else [plain.piece_to_id("\u2581")]
        elif part:
            ids += no_prefix.encode(part)
    return ids


ATOMS = [
    " ", "  ", "\n", "\t", "\r\n", "\u2581", "<s>", "</s>", "<unk>", "<", ">", "s>", "a", "Hello", "world", ".", ",",
    "?", "'s", " n't", "日本", "😀", "é", "e\u0301", "\u00a0", "\u3000", "\u200b", "[INST]", " [/INST] ", "<EOI>",
    "Question:", " Answer:", "[[102,341,560,998]]", "0", "123", "\x00", "\ufffd", "ℌ", "ﬁ", "𝔘", "<|eot_id|>",
]


def random_texts(seed: int, n: int) -> list[str]:
    """Mostly pieces that stress whitespace and special-looking text; some arbitrary code points."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        if rng.random() < 0.75:
            texts.append("".join(rng.choice(ATOMS) for _ in range(rng.randint(1, 10))))
        else:
            points = [rng.choice([rng.randint(32, 126), rng.randint(0xA0, 0xD7FF), rng.randint(0x1F300, 0x1FAFF), 32, 10])
                      for _ in range(rng.randint(1, 16))]
            texts.append("".join(map(chr, points)))
    return texts


def test_sources_md_sanity_ids(vicuna, llama3):
    assert vicuna.encode("Hello world") == [15043, 3186] and llama3.encode("Hello world") == [9906, 1917]
    assert (len(vicuna), vicuna.bos_token_id, vicuna.eos_token_id, vicuna.pad_token_id) == (32000, 1, 2, 0)
    assert (len(llama3), llama3.bos_token_id, llama3.eos_token_id) == (128256, 128000, 128001)


def test_leading_and_double_spaces_get_the_official_ids(vicuna):
    # the cases transformers 5's rebuilt Llama tokenizer gets wrong ([15043], [263, 259, 29890], [29871])
    assert vicuna.encode(" Hello") == [29871, 15043]
    assert vicuna.encode("a  b") == [263, 29871, 289]
    assert vicuna.encode(" ") == [259]
    # a --prompt with a leading and a double space, in the chat template (official 4.40.2 slow tokenizer);
    # transformers 5 gives [..., 915, 259, 1552, ...] for "be  the"
    prompt = apply_template("  Describe  the image.", "chat")
    assert vicuna.encode(prompt) == [894, 29901, 259, 20355, 915, 29871, 278, 1967, 29889, 673, 29901]


@pytest.mark.parametrize("name", ["llama2", "llama2_legacy", "llama3"])
def test_ids_and_text_equal_the_recorded_official_tokenizers(real, name):
    if name == "llama3":
        tokenizer = open_tokenizer(real / "llama3")
    else:
        config = read_tokenizer_config(real / "llama2")
        tokenizer = SentencePieceTokenizer(real / "llama2" / "tokenizer.model", {**config, "legacy": name == "llama2_legacy"})
    record = RECORDED[name]
    assert [tokenizer.encode(t) for t in RECORDED["texts"]] == record["encode"]
    assert [tokenizer.decode(ids) for ids in record["decode_ids"]] == record["decode"]
    assert [tokenizer.decode(ids, skip_special_tokens=True) for ids in record["decode_ids"]] == record["decode_skip_special"]


def test_the_restated_rule_matches_the_recorded_official_ids(engines):
    """The fuzz test's reference is itself checked against what transformers 4.40.2 recorded."""
    assert [official_llama2_ids(t, *engines) for t in RECORDED["texts"]] == RECORDED["llama2"]["encode"]


def test_random_texts_equal_sentencepiece_under_the_official_rule(vicuna, engines):
    texts = random_texts(seed=0, n=3000)
    mismatches = [(t, vicuna.encode(t), official_llama2_ids(t, *engines)) for t in texts]
    mismatches = [m for m in mismatches if m[1] != m[2]]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} texts differ, e.g. {mismatches[:3]}"


def test_random_texts_round_trip_where_the_official_decode_does(vicuna, engines):
    plain, _ = engines
    for text in random_texts(seed=1, n=500):
        if not re.search("<unk>|<s>|</s>|\u2581", text):  # these do not come back by design (official too)
            assert vicuna.decode(vicuna.encode(text)) == plain.decode(plain.encode(text))


def test_llama3_ids_equal_its_tokenizer_file(real, llama3):
    from tokenizers import Tokenizer

    official = Tokenizer.from_file(str(real / "llama3" / "tokenizer.json"))
    for text in random_texts(seed=2, n=1000):
        assert llama3.encode(text) == official.encode(text, add_special_tokens=False).ids


def test_llama3_decode_applies_the_configs_clean_up(real, llama3, tmp_path):
    text = "A dog , a cat . It 's big ! Is n't it ? They 're here"
    ids = llama3.encode(text)
    assert llama3.decode(ids) == "A dog, a cat. It's big! Isn't it? They're here"
    config = json.loads((real / "llama3" / "tokenizer_config.json").read_text())
    shutil.copyfile(real / "llama3" / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "clean_up_tokenization_spaces": False}))
    assert open_tokenizer(tmp_path).decode(ids) == text
    assert llama3.decode([128000, *ids, 128009], skip_special_tokens=True) == llama3.decode(ids)


def test_sentencepiece_is_preferred_beside_a_tokenizer_json(real, vicuna, tmp_path):
    """The official v1 code loads Vicuna with the slow LlamaTokenizer even when a tokenizer.json is there."""
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(real / "llama2" / name, tmp_path / name)
    shutil.copyfile(real / "llama3" / "tokenizer.json", tmp_path / "tokenizer.json")  # any other file
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "LlamaTokenizerFast"}))
    tokenizer = open_tokenizer(tmp_path)
    assert isinstance(tokenizer, SentencePieceTokenizer) and tokenizer.encode(" [INST] hi") == vicuna.encode(" [INST] hi")


def test_a_tiktoken_file_is_not_taken_for_sentencepiece(real, tmp_path):
    xz = SHARED_TOKENIZERS / "llama3" / "tokenizer.model.xz"
    (tmp_path / "tokenizer.model").write_bytes(lzma.decompress(xz.read_bytes()))
    with pytest.raises(CheckpointError, match="not a sentencepiece model"):
        open_tokenizer(tmp_path)


def test_code_in_a_tokenizer_directory_is_never_run(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    (tmp_path / "tokenization_custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CustomTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_custom.CustomTokenizer", None]},
    }))
    monkeypatch.setattr("sys.stdin", None)  # a prompt asking whether to run it would fail here
    cfg = ModelConfig.from_dict(RELEASED_CONFIGS["cogvlm-chat-hf"])
    with pytest.raises(CheckpointError, match="neither a sentencepiece tokenizer.model nor a tokenizer.json"):
        load_tokenizer("unused", tmp_path, cfg)
    assert not marker.exists()
