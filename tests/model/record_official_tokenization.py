"""Record what the official tokenizers give on the real vocabularies, for test_tokenization.py.

Not a test and not run in CI: it needs transformers 4.x (the official code's), which this project
does not install. Run it once in a throwaway environment and commit the JSON it writes:

    python -m venv /tmp/t4 && /tmp/t4/bin/pip install "transformers==4.40.2" sentencepiece protobuf
    /tmp/t4/bin/python tests/model/record_official_tokenization.py DIR_WITH_llama2_AND_llama3 OUT.json

DIR holds the decompressed ../shared/tokenizers files (llama2/tokenizer.model, llama3/tokenizer.json and
their configs). Llama-2 is read by the slow sentencepiece LlamaTokenizer with the Vicuna config
(`legacy: false`) and once more with `legacy: true`; Llama-3 by PreTrainedTokenizerFast.
"""

from __future__ import annotations

import json
import sys

TEXTS = [
    "", " ", "  ", "   ", "\n", " \n", "\n ", "Hello world", " Hello", "  Hello", "Hello ", "Hello  ",
    "a  b", "a   b", "a\nb", "a \n b", "\n\nx", "\t tab", "x\r\ny", "x\n\n\n", "\u2581", "\u2581\u2581a",
    "a\u2581b", " \u2581a", "<s>", " <s>", "<s> x", "<s>x", "<s>  x", "x <s>", "x<s>", "x</s>y", "x</s> y",
    "x </s>  y", "<unk>", "<unk> a", "<s></s>", "<s> </s>", "[INST]", " [INST] Describe it. [/INST] ",
    "<EOI>Question: What is shown? Short answer:", "Question: hi Answer:", "Question:  two spaces Answer:",
    "  Describe the image.", "Where is the dog? answer in [[x0,y0,x1,y1]] format.",
    "a dog [[102,341,560,998]] on a sofa [[000,420,999,999]]", "日本語のテキスト", "中文 测试", "😀 emoji 🤖",
    "é vs e\u0301", "\u00a0nbsp", "\u3000ideographic space", "zero\u200bwidth", "\x00nul", "ℌ𝔘 math",
    "ﬁ ligature", "ü", "<|eot_id|>", "<|begin_of_text|>Hi", "Hi<|end_of_text|>", "a <|eot_id|> b",
    "Hello , world ! It 's I 'm we 're they 've don 't", "'s", " ' ", "end .", "a ?b !c ,d",
]
LLAMA2_IDS = [[29871, 13, 15043], [29871], [259], [1, 15043], [15043, 1, 3186], [0], [15043, 0, 3186], [243, 162],
              [243, 162, 155, 131], [1], [2, 15043], [1, 29871], [15043, 2], [13, 13], [29871, 29871, 29871]]
LLAMA3_IDS = [[128000, 9906], [9906, 128009, 1917], [220], [128001], [1174, 662], [15339, 1174, 1917, 758]]


def main(src: str, out: str) -> None:
    import transformers
    from transformers import AutoTokenizer, LlamaTokenizer

    vicuna = LlamaTokenizer.from_pretrained(f"{src}/llama2", local_files_only=True, trust_remote_code=False)
    legacy = LlamaTokenizer.from_pretrained(f"{src}/llama2", local_files_only=True, legacy=True)
    llama3 = AutoTokenizer.from_pretrained(f"{src}/llama3", local_files_only=True, trust_remote_code=False)
    assert not vicuna.legacy and legacy.legacy and type(llama3).__name__ == "PreTrainedTokenizerFast"
    record = {"transformers": transformers.__version__, "texts": TEXTS}
    for name, tok, extra_ids in (("llama2", vicuna, LLAMA2_IDS), ("llama2_legacy", legacy, []),
                                 ("llama3", llama3, LLAMA3_IDS)):
        encoded = [tok.encode(t, add_special_tokens=False) for t in TEXTS]
        ids = encoded + extra_ids
        record[name] = {
            "encode": encoded,
            "decode_ids": ids,
            "decode": [tok.decode(i) for i in ids],
            "decode_skip_special": [tok.decode(i, skip_special_tokens=True) for i in ids],
        }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(record, f, ensure_ascii=False, indent=0)
        f.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
