"""GLM-4's tokenizer, read from the checkpoint directory offline; no remote code is ever run.

The checkpoint ships `tokenizer.model`, a tiktoken rank file (one `base64(bytes) rank` line per
token), and `tokenizer_config.json`, whose `added_tokens_decoder` holds the special tokens; there
is no tokenizer.json (spec: glm-4v.md "Tokenizer"). We convert the ranks to a `tokenizers`
byte-level BPE: tiktoken merges, at every step, the adjacent pair whose concatenation has the
lowest rank; a BPE whose merges are every split of every multi-byte token into two tokens,
ordered by the rank of the token they make, does the same, and `ignore_merges` takes a whole
pre-token that is itself a token directly, as tiktoken does. The result is a transformers
PreTrainedTokenizerFast, so it is used exactly like the other checkpoints' tokenizers.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

from model.config import CheckpointError

RANK_FILE, CONFIG_FILE = "tokenizer.model", "tokenizer_config.json"
TOKENIZER_CLASS = "ChatGLM4Tokenizer"
# spec: the split regex (the cl100k / Llama-3 pattern)
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def is_glm4_tokenizer_dir(path: str | Path) -> bool:
    """A directory whose tokenizer_config.json names GLM-4's remote-code tokenizer class."""
    path = Path(path)
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("tokenizer_class") == TOKENIZER_CLASS


def read_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read the tiktoken rank file {path}: {e}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise CheckpointError(f"{path}:{number} is not a 'base64 rank' line") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise CheckpointError(f"{path}: ranks must be 0..{len(ranks) - 1}, each once")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise CheckpointError(f"{path}: byte-level BPE needs all 256 single bytes; {len(missing)} are missing")
    return ranks


def read_specials(path: Path, first_id: int) -> tuple[list[str], dict]:
    """Special token strings in id order (they must follow the ranks without gaps), and the config."""
    try:
        config = json.loads(path.read_text())
        decoder = {int(i): entry["content"] for i, entry in config.get("added_tokens_decoder", {}).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"cannot read the special tokens in {path}: {e!r}") from None
    ids = sorted(decoder)
    if ids != list(range(first_id, first_id + len(ids))):
        raise CheckpointError(f"{path}: special token ids must follow the {first_id} ranks without gaps, got {ids[:3]}...")
    return [decoder[i] for i in ids], config


def bpe_from_ranks(ranks: dict[bytes, int]):
    """A `tokenizers` byte-level BPE model that gives tiktoken's ids for these ranks."""
    from tokenizers import models

    to_char = byte_to_unicode()
    text = {token: "".join(to_char[b] for b in token) for token in ranks}  # the ByteLevel spelling
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        for cut in range(1, len(token)):  # spec: every split of every multi-byte token, ordered by rank
            left, right = token[:cut], token[cut:]
            if left in text and right in text:
                merges.append((text[left], text[right]))
    vocab = {text[token]: rank for token, rank in ranks.items()}
    return models.BPE(vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False, byte_fallback=False)


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table, the alphabet of `tokenizers`' ByteLevel pre-tokenizer and decoder."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}


def load_glm4_tokenizer(path: str | Path):
    """PreTrainedTokenizerFast for a GLM-4 tokenizer directory; errors name the file to fix."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, processors
    from transformers import AddedToken, PreTrainedTokenizerFast

    path = Path(path)
    if not (path / RANK_FILE).is_file():
        raise CheckpointError(f"{path} has no {RANK_FILE} (GLM-4's tiktoken rank file)")
    ranks = read_ranks(path / RANK_FILE)
    specials, config = read_specials(path / CONFIG_FILE, len(ranks))
    tokenizer = Tokenizer(bpe_from_ranks(ranks))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if {"[gMASK]", "<sop>"} <= set(specials):  # spec: encode() with special tokens adds the [gMASK]<sop> prefix
        prefix = [(s, len(ranks) + specials.index(s)) for s in ("[gMASK]", "<sop>")]
        tokenizer.post_processor = processors.TemplateProcessing(single="[gMASK] <sop> $A", special_tokens=prefix)
    eos = config.get("eos_token", "<|endoftext|>")
    pad = config.get("pad_token", eos)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=eos if isinstance(eos, str) else eos.get("content"),
        pad_token=pad if isinstance(pad, str) else pad.get("content"),
        additional_special_tokens=specials,
        padding_side="left",  # spec: the official tokenizer pads on the left only
        clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
        model_max_length=config.get("model_max_length", 8192),
    )
