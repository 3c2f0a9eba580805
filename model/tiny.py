"""Write a tiny random checkpoint in the released file and key layout, for tests and dry runs.

    python -m model.tiny OUT [--variant cogvlm|cogvlm2|cogvlm2-video|cogagent|glm4v] [--seed N]

OUT gets config.json (the released keys, small values), two safetensors shards with
model.safetensors.index.json, and a byte-level tokenizer built offline. v1 uses the Vicuna
special ids (pad = unk = 0, bos 1, eos 2); v2 mirrors Llama-3's order (bos, end_of_text,
reserved_0 as pad, eot_id) right after the 256 byte tokens, and names num_multi_query_heads so
that a small vocabulary is still detected as v2. cogvlm2-video is v2's tokenizer and language model
without the visual expert, detected from its class name, with a 224 px tower (the official code
hard-codes 64 + 2 tokens per frame) and the bf16 `rotary_emb.inv_freq` buffers the video
checkpoints carry. CogAgent is v1 plus the cross_* keys and a
small `cross_vision_config` (project convention, spec: cogagent.md), with v1's tokenizer. GLM-4V
gets its own file layout: a tiktoken rank file `tokenizer.model` (the 256 bytes plus merges
learned here from a fixed text) and `tokenizer_config.json` with GLM-4's 14 specials right after
the ranks, no tokenizer.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import re
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from model.architectures import build_model
from model.config import COGAGENT, COGVLM, COGVLM2, COGVLM2_VIDEO, GLM4V, VIDEO_ARCHITECTURE, ModelConfig

VISION_CONFIG = {
    "dropout_prob": 0.0,
    "hidden_act": "gelu",
    "hidden_size": 32,
    "image_size": 56,  # 4x4 patches: v2's 2x2 conv leaves 2x2
    "in_channels": 3,
    "intermediate_size": 64,
    "layer_norm_eps": 1e-06,
    "num_heads": 2,
    "num_hidden_layers": 2,
    "num_positions": 17,
    "patch_size": 14,
}

UNIT_SCALE = ("embed_tokens.weight", "word_embeddings.weight", "position_embedding.weight", "cls_embedding",
              "cls_token", "pos_embed", ".boi", ".eoi")
NORM_WEIGHTS = ("norm.weight", "layernorm.weight", "norm1.weight", "norm2.weight", "_ln.weight")
VARIANTS = (COGVLM, COGVLM2, COGVLM2_VIDEO, COGAGENT, GLM4V)
# GLM-4's special tokens in id order, right after the ranks (spec: glm-4v.md "Tokenizer")
GLM4_SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                 "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
                 "<|begin_of_video|>", "<|end_of_video|>"]
GLM4_MERGES = 120
# the text the tiny GLM-4 ranks are learned from: enough merges that encoding is more than bytes
GLM4_CORPUS = (
    "Describe this image in one sentence. Describe this image in detail. What is in the picture? "
    "Where is the dog? answer in [[x0,y0,x1,y1]] format. Can you provide a description of the image "
    "and include the coordinates for each mentioned object? What color is it? The image shows a red "
    "circle and a square on a white background.\n\n这是一张图片。图片里有一只猫。 12345 3.14 it's I'll we're\n"
)
V1_SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2}  # bytes follow at 3..258
V2_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|eot_id|>"]  # at 256..259


def tiny_config(variant: str) -> dict:
    common = {
        "architectures": ["CogVLMForCausalLM"],
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "rms_norm_eps": 1e-05,
        "template_version": "chat",
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vision_config": dict(VISION_CONFIG),
    }
    if variant == COGVLM:
        return {**common, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
                "max_position_embeddings": 2048, "vocab_size": 3 + 256}
    if variant == COGVLM2:
        return {**common, "bos_token_id": 256, "eos_token_id": [257, 259], "pad_token_id": 258,
                "max_position_embeddings": 8192, "num_multi_query_heads": 2, "vocab_size": 256 + 4}
    if variant == COGVLM2_VIDEO:
        # spec (cogvlm2-video): the caption model's config.json, small values; one eos id
        return {**common, "architectures": [VIDEO_ARCHITECTURE],
                "auto_map": {"AutoModelForCausalLM": "modeling_cogvlm.CogVLMVideoForCausalLM"},
                "bos_token_id": 256, "eos_token_id": 257, "pad_token_id": 258,
                "max_position_embeddings": 2048, "num_multi_query_heads": 2, "vocab_size": 256 + 4,
                "template_version": "base",  # as the caption model's; the caption tool passes chat
                "vision_config": {**VISION_CONFIG, "image_size": 224, "num_positions": 257}}
    if variant == COGAGENT:
        cross = {"width": 32, "layers": 2, "head_width": 16, "mlp_ratio": 2.6667, "patch_size": 14,
                 "embed_dim": 16, "pt_hw_seq_len": 16, "layer_norm_eps": 1e-06}
        return {**tiny_config(COGVLM), "architectures": ["CogAgentForCausalLM"], "cross_hidden_size": 32,
                "cross_compute_hidden_size": 32, "cross_image_size": 84, "cross_vision_config": cross}
    if variant == GLM4V:
        return glm4v_tiny_config()
    raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")


def rotary_buffers(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """spec (cogvlm2-video): each layer stores its inv_freq [head_dim / 2] in bf16."""
    inv_freq = 1.0 / cfg.rope_base ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim)
    return {
        f"model.layers.{n}.self_attn.rotary_emb.inv_freq": inv_freq.to(torch.bfloat16)
        for n in range(cfg.num_hidden_layers)
    }


def glm4v_tiny_config() -> dict:
    """GLM-4V's config.json keys (spec: glm-4v.md) at tiny sizes; specials follow the tiny ranks."""
    first = 256 + GLM4_MERGES
    special = {name: first + i for i, name in enumerate(GLM4_SPECIALS)}
    return {
        "architectures": ["ChatGLMModel"], "model_type": "chatglm",
        "add_bias_linear": False, "add_qkv_bias": True, "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False, "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True, "attn_implementation": "sdpa", "bias_dropout_fusion": True,
        "boi_token_id": special["<|begin_of_image|>"], "eoi_token_id": special["<|end_of_image|>"],
        "eos_token_id": [special["<|endoftext|>"], special["<|user|>"], special["<|observation|>"]],
        "pad_token_id": special["<|endoftext|>"],
        "ffn_hidden_size": 128, "fp32_residual_connection": False, "hidden_dropout": 0.0, "hidden_size": 64,
        "kv_channels": 16, "layernorm_epsilon": 1.5625e-07, "multi_query_attention": True,
        "multi_query_group_num": 2, "num_attention_heads": 4, "num_layers": 2, "original_rope": True,
        # like the release, embedding rows past the tokenizer are padding
        "padded_vocab_size": first + len(GLM4_SPECIALS) + 2, "post_layer_norm": True, "rmsnorm": True,
        "seq_length": 2048, "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": True,
        "vision_config": {**VISION_CONFIG, "scaling_factor": 8},
    }


def random_state_dict(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Every released key with a deterministic random value scaled so activations stay O(1)."""
    with torch.device("meta"):
        shapes = {k: t.shape for k, t in build_model(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name in sorted(shapes):
        shape = shapes[name]
        noise = torch.randn(shape, generator=gen)
        if name.endswith(NORM_WEIGHTS):
            state[name] = 1.0 + 0.1 * noise
        elif name.endswith((".bias", "_bias")):
            state[name] = 0.05 * noise
        elif name.endswith(UNIT_SCALE):
            state[name] = noise
        else:
            state[name] = noise / math.sqrt(math.prod(shape[1:]))  # weights: 1 / sqrt(fan_in)
    return state


def write_shards(state: dict[str, torch.Tensor], out: Path, num_shards: int = 2) -> None:
    names = sorted(state)
    total = sum(t.numel() * t.element_size() for t in state.values())
    groups: list[list[str]] = [[] for _ in range(num_shards)]
    written = 0
    for name in names:  # fill shards in key order up to an even share of the bytes each
        groups[min(num_shards - 1, written * num_shards // total)].append(name)
        written += state[name].numel() * state[name].element_size()
    weight_map = {}
    for i, group in enumerate(groups, 1):
        file = f"model-{i:05d}-of-{num_shards:05d}.safetensors"
        save_file({k: state[k].contiguous() for k in group}, str(out / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in group})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def learn_ranks(corpus: str, merges: int) -> list[bytes]:
    """The 256 bytes, then `merges` tokens, each the most frequent adjacent pair (ties: smallest bytes)."""
    words = [[bytes([b]) for b in w.encode()] for w in re.findall(r" ?\S+|\s+", corpus)]
    ranks = [bytes([b]) for b in range(256)]
    while len(ranks) < 256 + merges:
        pairs = Counter((w[i], w[i + 1]) for w in words for i in range(len(w) - 1))
        (left, right), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        ranks.append(left + right)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if (w[i], w[i + 1]) == (left, right):
                    w[i : i + 2] = [left + right]
                i += 1
    return ranks


def write_glm4_tokenizer(out: Path, image_size: int) -> None:
    """GLM-4's released tokenizer files: the rank file and tokenizer_config.json (no tokenizer.json)."""
    ranks = learn_ranks(GLM4_CORPUS, GLM4_MERGES)
    lines = [f"{base64.b64encode(token).decode()} {rank}" for rank, token in enumerate(ranks)]
    (out / "tokenizer.model").write_text("\n".join(lines) + "\n")
    added = {
        str(len(ranks) + i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                              "single_word": False, "special": True}
        for i, s in enumerate(GLM4_SPECIALS)
    }
    config = {
        "added_tokens_decoder": added, "additional_special_tokens": GLM4_SPECIALS,
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLM4Tokenizer", None]},
        "clean_up_tokenization_spaces": False, "do_lower_case": False, "eos_token": "<|endoftext|>",
        "image_size": image_size, "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<|endoftext|>", "padding_side": "left", "remove_space": False,
        "tokenizer_class": "ChatGLM4Tokenizer",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_tokenizer(variant: str, out: Path) -> None:
    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())  # byte-level BPE with no merges
    if variant in (COGVLM, COGAGENT):
        vocab = dict(V1_SPECIALS) | {c: 3 + i for i, c in enumerate(byte_chars)}
        specials = list(V1_SPECIALS)
        tok_config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}
    else:
        vocab = {c: i for i, c in enumerate(byte_chars)} | {s: 256 + i for i, s in enumerate(V2_SPECIALS)}
        specials = V2_SPECIALS
        tok_config = {"bos_token": V2_SPECIALS[0], "eos_token": V2_SPECIALS[1]}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>" if variant != COGVLM2 else None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(specials)
    tokenizer.save(str(out / "tokenizer.json"))
    # explicit: transformers' default for a config without it changed (true up to 4.44, false from 4.45)
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 2048,
                  "clean_up_tokenization_spaces": False, **tok_config}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")


def write_tiny_checkpoint(out_dir: str | Path, variant: str = COGVLM, seed: int = 0) -> Path:
    out = Path(out_dir)
    raw = tiny_config(variant)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    cfg = ModelConfig.from_dict(raw)
    state = random_state_dict(cfg, seed)
    if cfg.is_video:
        state.update(rotary_buffers(cfg))
    write_shards(state, out)
    if variant == GLM4V:
        write_glm4_tokenizer(out, raw["vision_config"]["image_size"])
    else:
        write_tokenizer(variant, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to write (created if needed)")
    parser.add_argument("--variant", choices=VARIANTS, default=COGVLM)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_tiny_checkpoint(args.out, args.variant, args.seed))


if __name__ == "__main__":
    main()
