"""Text <-> token ids exactly as the official CogVLM code gets them, without transformers.

The official v1 code tokenizes with the slow sentencepiece `LlamaTokenizer` of transformers 4.3x/4.4x
(Vicuna-7B v1.5's files: `legacy: false`); CogVLM2 with the fast tokenizer built from its
`tokenizer.json`. transformers 5 no longer has the slow class: its `LlamaTokenizer` rebuilds a
`tokenizers` pipeline from tokenizer.model whose ids differ for text that starts with whitespace or
holds two spaces in a row. So both are run here on their own engines, `sentencepiece` and
`tokenizers`, with the rules those transformers classes apply around the engine written out below;
the result does not depend on the installed transformers version.

Both classes offer the few members the model code uses, named as in transformers:
`encode(text, add_special_tokens=False)`, `decode(ids, skip_special_tokens=False)`, `len()`,
`bos_token_id`, `eos_token_id`, `pad_token_id`, `unk_token_id`, `all_special_ids`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from model.config import CheckpointError, read_json_object

SPIECE_UNDERLINE = "\u2581"  # sentencepiece's visible space
SPECIAL_TOKEN_ATTRS = ("bos_token", "eos_token", "unk_token", "pad_token")
# transformers' legacy=False merges `normalizer_spec { add_dummy_prefix: false }` into the model proto.
# The same merge in wire format: field 3 (normalizer_spec, a message) holding field 3 (add_dummy_prefix,
# a varint) = 0; a parser merges a repeated message field and the last scalar wins. Appending the bytes
# avoids protobuf's generated module, which clashes with transformers' own copy in one process.
NO_DUMMY_PREFIX = bytes([3 << 3 | 2, 2, 3 << 3 | 0, 0])
LLAMA_SLOW_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer", "CodeLlamaTokenizerFast")


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization_spaces` rule (4.x `clean_up_tokenization`), verbatim order:
    drops the space before . ? ! , and English contractions."""
    for before, after in (
        (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
        (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
    ):
        text = text.replace(before, after)
    return text


def read_tokenizer_config(path: Path) -> dict:
    """tokenizer_config.json merged over special_tokens_map.json (the config wins), {} if neither."""
    merged: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        file = path / name
        if not file.is_file():
            continue
        raw = read_json_object(file)
        # a null in the config does not hide special_tokens_map's value (as transformers loads them)
        merged.update({k: v for k, v in raw.items() if v is not None or k not in merged})
    return merged


def token_content(value) -> str | None:
    """A special token as the config writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class SentencePieceTokenizer:
    """The slow sentencepiece `LlamaTokenizer` of transformers 4.40-4.4x, on `sentencepiece` itself.

    `legacy: false` (Vicuna-7B v1.5): "▁" in the text becomes a space, one "▁" is put in front (the
    model's own dummy prefix is switched off), the text is split at the special tokens' literal text
    (`<s>`, `</s>`, `<unk>` become their ids, as in the official code), and a piece that follows a
    special token gets no dummy prefix. `legacy: true` (the default when the config does not say):
    every piece between special tokens is encoded with the model's own dummy prefix.
    """

    def __init__(self, model_file: Path, config: dict):
        import sentencepiece as spm

        try:
            proto = model_file.read_bytes()
            self._plain = spm.SentencePieceProcessor(model_proto=proto)
            self._no_prefix = spm.SentencePieceProcessor(model_proto=proto + NO_DUMMY_PREFIX)
        except Exception as e:  # sentencepiece raises RuntimeError and others for a foreign file
            raise CheckpointError(
                f"cannot load a tokenizer from {model_file}: not a sentencepiece model ({type(e).__name__}: {e})"
            ) from None
        # transformers 4.40 warns and keeps the legacy behaviour when the config does not set it
        self.legacy = config.get("legacy") is not False
        self.add_prefix_space = config.get("add_prefix_space", True) is not False
        self.add_bos_token = config.get("add_bos_token", True) is not False
        self.add_eos_token = bool(config.get("add_eos_token", False))
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self._sp = self._plain if self.legacy else self._no_prefix
        defaults = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None}
        self._special_text = {a: token_content(config.get(a, defaults[a])) for a in SPECIAL_TOKEN_ATTRS}
        self.special_tokens: dict[str, int] = {}  # text -> id of every token split out of the input
        for name in filter(None, self._special_text.values()):
            self.special_tokens[name] = self._vocab_id(name, model_file)
        for index, entry in (config.get("added_tokens_decoder") or {}).items():
            name = token_content(entry)
            if name is None or self._vocab_id(name, model_file) != int(index):
                raise CheckpointError(
                    f"{model_file.parent}/tokenizer_config.json adds the token {name!r} at id {index}, which is not "
                    "that piece of tokenizer.model; only the model's own special pieces are supported"
                )
            if isinstance(entry, dict) and (entry.get("lstrip") or entry.get("rstrip") or entry.get("single_word")):
                raise CheckpointError(f"added token {name!r} strips spaces or is single_word: not supported")
            self.special_tokens[name] = int(index)
        self.all_special_ids = sorted(set(self.special_tokens.values()))
        # longest first: a regex alternation then finds the same split as transformers' trie
        alternatives = sorted(self.special_tokens, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")") if alternatives else None
        self._unk_prefix = self._special_text["unk_token"] or "<unk>"
        self._unk_prefix_length = len(self._no_prefix.encode(self._unk_prefix))
        self._underline_id = self._no_prefix.piece_to_id(SPIECE_UNDERLINE)

    def _vocab_id(self, piece: str, model_file: Path) -> int:
        index = self._plain.piece_to_id(piece)
        if self._plain.id_to_piece(index) != piece:
            raise CheckpointError(f"special token {piece!r} is not a piece of {model_file}")
        return index

    def _special_id(self, attr: str) -> int | None:
        name = self._special_text[attr]
        return None if name is None else self.special_tokens[name]

    bos_token_id = property(lambda self: self._special_id("bos_token"))
    eos_token_id = property(lambda self: self._special_id("eos_token"))
    unk_token_id = property(lambda self: self._special_id("unk_token"))
    pad_token_id = property(lambda self: self._special_id("pad_token"))

    def __len__(self) -> int:
        return self._plain.get_piece_size()

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = self._tokenize(text)
        if add_special_tokens:
            bos, eos = self.bos_token_id, self.eos_token_id
            ids = ([bos] if self.add_bos_token and bos is not None else []) + ids
            ids += [eos] if self.add_eos_token and eos is not None else []
        return ids

    def _tokenize(self, text: str) -> list[int]:
        if self.legacy or not text:
            return self._encode_around_specials(text)
        text = text.replace(SPIECE_UNDERLINE, " ")
        if self.add_prefix_space:
            text = SPIECE_UNDERLINE + text
        ids = self._encode_around_specials(text)
        # the "▁" put in front is dropped again when a special token follows it directly
        if len(ids) > 1 and ids[0] == self._underline_id and ids[1] in self.all_special_ids:
            ids = ids[1:]
        return ids

    def _encode_around_specials(self, text: str) -> list[int]:
        chunks = self._split.split(text) if self._split else [text]
        ids: list[int] = []
        for i, chunk in enumerate(chunks):
            if i % 2:  # the split pattern's captured group: a special token's text
                ids.append(self.special_tokens[chunk])
            elif chunk:
                ids.extend(self._encode_piece(chunk))
        return ids

    def _encode_piece(self, chunk: str) -> list[int]:
        if self.legacy or not chunk.startswith((SPIECE_UNDERLINE, " ")):
            return self._sp.encode(chunk)
        # transformers encodes "<unk>" + chunk and removes the pieces of "<unk>", so that a model whose
        # normalizer strips leading whitespace keeps it; on Llama-2's model both ways agree
        ids = self._no_prefix.encode(self._unk_prefix + chunk)
        return ids[self._unk_prefix_length:] if len(ids) >= self._unk_prefix_length else ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        special = set(self.all_special_ids)
        pieces = [self._plain.id_to_piece(int(i)) for i in ids if not (skip_special_tokens and int(i) in special)]
        text = self._pieces_to_text(pieces, {self._plain.id_to_piece(i) for i in special}) if pieces else ""
        cleanup = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        return clean_up_tokenization(text) if cleanup else text

    def _pieces_to_text(self, pieces: list[str], special_pieces: set[str]) -> str:
        # transformers' convert_tokens_to_string: the prefix "▁" it added is removed, special tokens are
        # written as their text and never decoded by sentencepiece
        if pieces[0].startswith(SPIECE_UNDERLINE) and self.add_prefix_space:
            pieces[0] = pieces[0][1:]
        out, run, prev_special = "", [], False
        for i, piece in enumerate(pieces):
            if piece in special_pieces:
                if not prev_special and i != 0 and self.legacy:
                    out += " "
                out += self._sp.decode_pieces(run) + piece
                run, prev_special = [], True
            else:
                if prev_special and i == 1 and self.add_prefix_space and not piece.startswith(SPIECE_UNDERLINE):
                    out += " "
                run.append(piece)
                prev_special = False
        return out + self._sp.decode_pieces(run)


class FastTokenizer:
    """A `tokenizer.json` run by the `tokenizers` library, as transformers' PreTrainedTokenizerFast
    runs it: ids straight from the file's pipeline; decode then, if the config asks for
    `clean_up_tokenization_spaces` (Llama-3's does; absent, it is on, as in the 4.40-4.44 versions
    the official code ran with), its clean-up."""

    def __init__(self, tokenizer_file: Path, config: dict):
        from tokenizers import AddedToken, Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(tokenizer_file))
        except Exception as e:  # tokenizers raises a bare Exception for a broken file
            raise CheckpointError(f"cannot load a tokenizer from {tokenizer_file}: {type(e).__name__}: {e}") from None
        self.clean_up_tokenization_spaces = config.get("clean_up_tokenization_spaces", True) is not False
        self._special_text = {a: token_content(config.get(a)) for a in SPECIAL_TOKEN_ATTRS}
        # like PreTrainedTokenizerFast.__init__: the config's added and special tokens that the file lacks are added
        known = {t.content for t in self._tok.get_added_tokens_decoder().values()}
        missing = []
        for entry in (config.get("added_tokens_decoder") or {}).values():
            if isinstance(entry, dict) and entry.get("content") not in known:
                missing.append(AddedToken(entry["content"], single_word=entry.get("single_word", False),
                                          lstrip=entry.get("lstrip", False), rstrip=entry.get("rstrip", False),
                                          normalized=entry.get("normalized", False), special=entry.get("special", False)))
        missing += [AddedToken(t, special=True, normalized=False) for t in self._special_text.values()
                    if t and t not in known and t not in {m.content for m in missing}]
        if missing:
            self._tok.add_tokens(missing)
        self.all_special_ids = sorted(
            i for i, t in self._tok.get_added_tokens_decoder().items() if t.special
        )

    def _special_id(self, attr: str) -> int | None:
        name = self._special_text[attr]
        return None if name is None else self._tok.token_to_id(name)

    bos_token_id = property(lambda self: self._special_id("bos_token"))
    eos_token_id = property(lambda self: self._special_id("eos_token"))
    unk_token_id = property(lambda self: self._special_id("unk_token"))
    pad_token_id = property(lambda self: self._special_id("pad_token"))

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        text = self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        cleanup = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        return clean_up_tokenization(text) if cleanup else text


def open_tokenizer(path: Path):
    """The tokenizer the official code would build from directory `path`: sentencepiece for a Llama
    tokenizer.model (the official v1 code loads Vicuna's with the slow LlamaTokenizer even where a
    tokenizer.json sits beside it), else tokenizer.json. Nothing here can run code from the directory."""
    config = read_tokenizer_config(path)
    tokenizer_class = config.get("tokenizer_class")
    model_file, json_file = path / "tokenizer.model", path / "tokenizer.json"
    if model_file.is_file() and (
        tokenizer_class in LLAMA_SLOW_CLASSES or (tokenizer_class is None and not json_file.is_file())
    ):
        return SentencePieceTokenizer(model_file, config)
    if json_file.is_file():
        return FastTokenizer(json_file, config)
    raise CheckpointError(
        f"{path} holds neither a sentencepiece tokenizer.model nor a tokenizer.json that this project reads "
        f"(tokenizer_class {tokenizer_class!r})"
    )
