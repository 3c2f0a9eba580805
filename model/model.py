"""The CogVLM / CogVLM2 / CogAgent visual-expert model in one file.

Facts follow shared/spec/visual-expert-checkpoints.md ("spec" in comments) and, for the video
variant, shared/spec/cogvlm2-video.md ("spec (cogvlm2-video)"); CogAgent's cross tower and
cross-attention are in model/cogagent.py, GLM-4V's language model in model/glm.py. Module and
parameter names mirror the released checkpoints, so `state_dict()` keys are the released keys
and loading is a strict name match.

Shapes in comments: B batch, L new tokens, S keys seen (cache slots so far), H hidden,
Hq/Hkv query/key-value heads, D head dim, N images, P vision patches, Hv vision hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.cogagent import CrossAttention, CrossKV, CrossVisionTower
from model.config import COGAGENT, COGVLM2, GLM4V, ROPE_PRECISIONS, ModelConfig, VisionConfig

LANGUAGE, VISION = 0, 1  # token types


# ----------------------------------------------------------------------------- routing and positions


def vision_expert_mask(token_types: Tensor) -> Tensor:
    """[..., L] token types -> [..., L] bool: which positions use the vision expert."""
    # spec: vision expert iff this AND the next position are vision; so eoi and the last position use language
    is_vision = token_types == VISION
    mask = torch.zeros_like(is_vision)
    mask[..., :-1] = is_vision[..., :-1] & is_vision[..., 1:]
    return mask


def rope_positions(token_types: Tensor) -> Tensor:
    """[..., L] token types of unpadded rows (bos first) -> [..., L] RoPE position ids."""
    # spec: boi and eoi count as language, every patch shares one id: bos 0, boi 1, patches 2, eoi 3, text 4...
    is_vision = token_types == VISION
    prev_vision = F.pad(is_vision[..., :-1], (1, 0), value=False)
    next_vision = F.pad(is_vision[..., 1:], (0, 1), value=False)
    is_patch = is_vision & prev_vision & next_vision
    repeats_patch = is_patch & F.pad(is_patch[..., :-1], (1, 0), value=False)
    return (~repeats_patch).long().cumsum(-1) - 1


# ----------------------------------------------------------------------------- KV cache


@dataclass
class KVCache:
    """Preallocated keys and values for every language layer; slots are shared by all rows."""

    k: Tensor  # [layers, B, Hkv, T, D]
    v: Tensor
    cross: CrossKV | None = None  # CogAgent: cross-attention keys/values, once per image

    @classmethod
    def allocate(cls, cfg: ModelConfig, batch: int, length: int, device, dtype) -> "KVCache":
        shape = (cfg.num_hidden_layers, batch, cfg.num_kv_heads, length, cfg.head_dim)
        # zeroed: a slot is written before it is read, but garbage there could still turn 0 * NaN into NaN
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    def first_rows(self, n: int) -> "KVCache":  # a view: writes land in this cache
        cross = self.cross.for_rows(self.cross.image_of_row[:n]) if self.cross is not None else None
        return KVCache(self.k[:, :n], self.v[:, :n], cross)

    def copy_slots_(self, dst_rows: Tensor, src_rows: Tensor, upto: int) -> None:
        self.k[:, dst_rows, :, :upto] = self.k[:, src_rows, :, :upto]
        self.v[:, dst_rows, :, :upto] = self.v[:, src_rows, :, :upto]

    def reorder_(self, rows: Tensor) -> None:  # beam search: row i continues from row rows[i]
        self.k = self.k.index_select(1, rows)
        self.v = self.v.index_select(1, rows)
        if self.cross is not None:  # the images stay put; only which row reads which changes
            self.cross = self.cross.for_rows(self.cross.image_of_row[rows])

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write [B, Hkv, L, D] at slots start..start+L; return all keys/values up to there."""
        end = start + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


# ----------------------------------------------------------------------------- vision tower (EVA2-CLIP-E)


class PatchEmbedding(nn.Module):
    def __init__(self, v: VisionConfig):
        super().__init__()
        self.proj = nn.Conv2d(v.in_channels, v.hidden_size, kernel_size=v.patch_size, stride=v.patch_size)
        self.cls_embedding = nn.Parameter(torch.empty(1, v.hidden_size))
        self.position_embedding = nn.Embedding(v.num_positions, v.hidden_size)

    def forward(self, images: Tensor) -> Tensor:  # [N, 3, S, S] -> [N, 1+P, Hv]
        x = self.proj(images).flatten(2).transpose(1, 2)  # [N, P, Hv]
        cls = self.cls_embedding.expand(x.shape[0], 1, -1)
        # spec: no interpolation, the table covers exactly cls + grid*grid
        return torch.cat([cls, x], dim=1) + self.position_embedding.weight[None]


class VisionAttention(nn.Module):
    def __init__(self, v: VisionConfig):
        super().__init__()
        self.num_heads = v.num_heads
        self.query_key_value = nn.Linear(v.hidden_size, 3 * v.hidden_size)
        self.dense = nn.Linear(v.hidden_size, v.hidden_size)

    def forward(self, x: Tensor) -> Tensor:  # [N, P, Hv]
        n, p, _ = x.shape
        # spec: fused qkv splits as (3, heads, head_dim)
        q, k, v = self.query_key_value(x).view(n, p, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # [N, heads, P, d]
        y = F.scaled_dot_product_attention(q, k, v)  # spec: full attention, scale head_dim^-0.5
        return self.dense(y.transpose(1, 2).reshape(n, p, -1))


class VisionMLP(nn.Module):
    def __init__(self, v: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(v.hidden_size, v.intermediate_size)
        self.fc2 = nn.Linear(v.intermediate_size, v.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # spec: exact (erf) GELU


class VisionLayer(nn.Module):
    def __init__(self, v: VisionConfig):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps)
        self.attention = VisionAttention(v)
        self.mlp = VisionMLP(v)
        self.post_attention_layernorm = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps)

    def forward(self, h: Tensor) -> Tensor:
        # spec: post-norm on the branch, despite the names: the norms apply to the sublayer output
        h = h + self.input_layernorm(self.attention(h))
        return h + self.post_attention_layernorm(self.mlp(h))


class VisionTransformer(nn.Module):
    def __init__(self, v: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(v) for _ in range(v.num_hidden_layers))

    def forward(self, h: Tensor) -> Tensor:
        for layer in self.layers:
            h = layer(h)
        return h


class GLU(nn.Module):
    """The adapter from vision features to language hidden size."""

    def __init__(self, cfg: ModelConfig, in_features: int):
        super().__init__()
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.linear_proj = nn.Linear(in_features, h, bias=False)
        self.norm1 = nn.LayerNorm(h, eps=1e-5)  # spec: adapter LayerNorm eps 1e-5
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.dense_h_to_4h = nn.Linear(h, i, bias=False)
        self.dense_4h_to_h = nn.Linear(i, h, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # [N, P', Hv] -> [N, P', H]
        x = F.gelu(self.norm1(self.linear_proj(x)))
        return self.dense_4h_to_h(F.silu(self.gate_proj(x)) * self.dense_h_to_4h(x))


class VisionTower(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        v = cfg.vision
        self.patch_embedding = PatchEmbedding(v)
        self.transformer = VisionTransformer(v)
        # spec (glm-4v.md): GLM-4V's conv maps into the language width and its GLU reads that (CogVLM2: Hv -> Hv)
        conv_out = cfg.hidden_size if cfg.variant == GLM4V else v.hidden_size
        self.linear_proj = GLU(cfg, conv_out if cfg.downsample else v.hidden_size)
        self.conv = nn.Conv2d(v.hidden_size, conv_out, kernel_size=2, stride=2) if cfg.downsample else None
        # spec (cogagent.md): CogAgent adds a second position table to the patch outputs, before the GLU
        self.pos_embed = nn.Parameter(torch.empty(v.grid * v.grid, v.hidden_size)) if cfg.variant == COGAGENT else None
        self.boi = nn.Parameter(torch.empty(1, 1, cfg.hidden_size))
        self.eoi = nn.Parameter(torch.empty(1, 1, cfg.hidden_size))
        self.grid = v.grid
        self.scaling = cfg.vision_scaling

    def forward(self, images: Tensor) -> Tensor:  # [N, 3, S, S] -> [N, image tokens, H]
        x = self.transformer(self.patch_embedding(images))[:, 1:]  # spec: drop cls -> [N, P, Hv]
        if self.pos_embed is not None:
            x = x + self.pos_embed
        if self.conv is not None:  # v2: [N, Hv, g, g] -> [N, Hv, g/2, g/2] -> [N, P/4, Hv] (GLM-4V: H out)
            grid = x.transpose(1, 2).unflatten(2, (self.grid, self.grid))
            x = self.conv(grid).flatten(2).transpose(1, 2)
        x = self.linear_proj(x)
        n = x.shape[0]
        x = torch.cat([self.boi.expand(n, -1, -1), x, self.eoi.expand(n, -1, -1)], dim=1)
        if self.scaling != 1.0:  # spec (glm-4v.md): boi, patches and eoi divided by scaling_factor
            x = x / self.scaling
        return x


# ----------------------------------------------------------------------------- language model


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # spec: normalize in fp32, multiply by the weight in fp32, then cast back
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * xf).to(x.dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:  # spec: rotate-half (GPT-NeoX)
    return x * cos + rotate_half(x) * sin


def expert_linear(x: Tensor, vision: Tensor | None, language_layer: nn.Linear, vision_layer: nn.Linear) -> Tensor:
    """Route each position of x [B, L, in] through one of two experts; vision None = all language."""
    if vision is None or not vision.any():
        return language_layer(x)
    out = x.new_empty(*x.shape[:-1], language_layer.out_features)
    out[vision] = vision_layer(x[vision])
    out[~vision] = language_layer(x[~vision])
    return out


def grouped_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """q [B, Hq, L, D] over k, v [B, Hkv, S, D] -> [B, Hq, L, D]; query head h reads kv head h // (Hq/Hkv).

    mask [B, 1, L, S] bool (True = may attend), or None for plain causal attention over fresh slots.
    """
    b, hq, l, d = q.shape
    group = hq // k.shape[1]
    if mask is None:  # the long image prefix: repeat kv heads so the fused causal kernels apply
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    # text and decode steps: a kv head's query heads become extra query rows, so the cache is read
    # once and never copied: [B, Hkv, group*L, D] against [B, Hkv, S, D]
    q = q.reshape(b, k.shape[1], group * l, d)
    mask = mask.unsqueeze(2).expand(b, 1, group, l, mask.shape[-1]).reshape(b, 1, group * l, -1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).view(b, hq, l, d)


class VisionExpertAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.hq, self.hkv, self.d = cfg.num_attention_heads, cfg.num_kv_heads, cfg.head_dim
        # spec: v2's vision expert qkv has a bias; the language expert never does.
        # spec (cogvlm2-video): no vision expert there, every position uses the language weights
        expert = cfg.visual_expert
        self.vision_expert_query_key_value = nn.Linear(cfg.hidden_size, cfg.qkv_size, bias=cfg.variant == COGVLM2) if expert else None
        self.vision_expert_dense = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False) if expert else None
        self.language_expert_query_key_value = nn.Linear(cfg.hidden_size, cfg.qkv_size, bias=False)
        self.language_expert_dense = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, vision, mask, cache: KVCache, layer: int, start: int) -> Tensor:
        b, l, _ = x.shape
        qkv = expert_linear(x, vision, self.language_expert_query_key_value, self.vision_expert_query_key_value)
        # spec: fused rows are q, k, v with heads contiguous; v2 splits [Hq*D, Hkv*D, Hkv*D]
        q, k, v = qkv.split([self.hq * self.d, self.hkv * self.d, self.hkv * self.d], dim=-1)
        q = q.view(b, l, self.hq, self.d).transpose(1, 2)  # [B, Hq, L, D]
        k = k.view(b, l, self.hkv, self.d).transpose(1, 2)  # [B, Hkv, L, D]
        v = v.view(b, l, self.hkv, self.d).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k, v = cache.update(layer, start, k, v)  # [B, Hkv, S, D]
        y = grouped_attention(q, k, v, mask)  # [B, Hq, L, D]
        y = y.transpose(1, 2).reshape(b, l, self.hq * self.d)
        return expert_linear(y, vision, self.language_expert_dense, self.vision_expert_dense)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class VisionExpertMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.language_mlp = MLP(cfg)
        self.vision_mlp = MLP(cfg) if cfg.visual_expert else None

    def forward(self, x: Tensor, vision: Tensor | None) -> Tensor:
        if vision is None or not vision.any():
            return self.language_mlp(x)
        out = torch.empty_like(x)
        out[vision] = self.vision_mlp(x[vision])
        out[~vision] = self.language_mlp(x[~vision])
        return out


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = VisionExpertAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = VisionExpertMLP(cfg)
        cross = cfg.variant == COGAGENT
        self.post_cross_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps) if cross else None
        self.cross_attn = CrossAttention(cfg) if cross else None

    def forward(self, h, cos, sin, vision, mask, cache, layer, start) -> Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, vision, mask, cache, layer, start)
        # spec (cogagent.md): the cross-attention sits between self-attention and the MLP; every position
        # queries it. A row without an image (no cross keys/values) skips it: our extension.
        if self.cross_attn is not None and cache.cross is not None:
            h = h + self.cross_attn(self.post_cross_attention_layernorm(h), cache.cross, layer)
        return h + self.mlp(self.post_attention_layernorm(h), vision)


class LanguageModel(nn.Module):
    """Named `model` inside CogVLMForCausalLM, as in the checkpoints; also holds the vision tower."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.vision = VisionTower(cfg)
        self.cross_vision = CrossVisionTower(cfg.cross_vision) if cfg.cross_vision is not None else None


class CogVLMForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = LanguageModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.init_rope()

    def init_rope(self, device=None, dtype: torch.dtype = torch.float32, precision: str = "official") -> None:
        """(Re)compute the RoPE tables for weights of `dtype`, one row per position id; not part of the checkpoint.

        "official": as the official code builds them (FastRotaryEmbedding with pos_idx_in_fp32=False)
        with its module cast to `dtype`: inv_freq, the positions, their product and cos/sin all in
        `dtype`. In bf16 the positions round (257 -> 256, 301 -> 300) and the angles drift; the
        released weights were trained that way. "hf": as the official Hugging Face demos run it:
        from_pretrained keeps the buffer fp32 but fills it with the stored inv_freq rounded to
        `dtype`, so fp32 positions times a rounded inv_freq. "fp32": exact fp32 tables. All are cast
        to the activations' dtype where applied; for fp32 weights all are the same tables.
        """
        if precision not in ROPE_PRECISIONS:
            raise ValueError(f"unknown RoPE precision {precision!r}; expected one of {ROPE_PRECISIONS}")
        cfg = self.config
        table_dtype = dtype if precision == "official" else torch.float32
        inv_freq = 1.0 / cfg.rope_base ** (torch.arange(0, cfg.head_dim, 2, device=device).float() / cfg.head_dim)
        if precision != "fp32":  # the fp32 formula's values rounded as a load in `dtype` rounds the buffer
            inv_freq = inv_freq.to(dtype)
        inv_freq = inv_freq.to(table_dtype)
        # each position rounded from fp32, as CUDA's arange in bf16 gives them (the official code runs on CUDA;
        # CPU's vectorized bf16 arange drifts from that above 4096)
        positions = torch.arange(cfg.rope_positions, device=device).float().to(table_dtype)
        angles = torch.outer(positions, inv_freq)  # product in table_dtype, as the official code takes it
        angles = torch.cat([angles, angles], dim=-1)  # [positions, D], rotate-half layout
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)
        self.rope_precision = precision

    def encode_images(self, pixel_values: Tensor) -> Tensor:  # [N, 3, S, S] -> [N, image tokens, H]
        return self.model.vision(pixel_values.to(self.lm_head.weight.dtype))

    def encode_videos(self, frames: list[Tensor]) -> list[Tensor]:  # V x [T_v, 3, S, S] -> V x [T_v * 66, H]
        # spec (cogvlm2-video): frames are independent images, so all videos' frames are one ViT batch;
        # each video's features are flattened frame-major
        features = self.encode_images(torch.cat(frames))  # [sum T, 66, H]
        return [f.flatten(0, 1) for f in features.split([len(f) for f in frames])]

    @property
    def vision_tower(self) -> VisionTower:
        return self.model.vision

    def encode_cross_images(self, pixel_values: Tensor) -> Tensor:  # CogAgent: [N, 3, Sx, Sx] -> [N, P, W]
        return self.model.cross_vision(pixel_values.to(self.lm_head.weight.dtype))

    def cross_key_values(self, encoded: Tensor, image_of_row: Tensor) -> CrossKV:
        """CogAgent: every layer's cross keys/values of encoded [U, P, W], computed once for all rows and steps."""
        layers = self.model.layers
        u, p, _ = encoded.shape
        shape = (len(layers), u, self.config.num_attention_heads, p, self.config.cross_compute_hidden_size // self.config.num_attention_heads)
        k, v = encoded.new_empty(shape), encoded.new_empty(shape)  # filled layer by layer: no stacked copy
        for i, layer in enumerate(layers):
            k[i], v[i] = layer.cross_attn.key_values(encoded)
        return CrossKV(k, v, image_of_row)

    def embed(self, ids: Tensor) -> Tensor:
        return self.model.embed_tokens(ids)

    def forward(
        self,
        x: Tensor,  # [B, L, H] input embeddings
        positions: Tensor,  # [B, L] RoPE position ids
        vision: Tensor | None,  # [B, L] bool: vision expert; None = all language
        mask: Tensor | None,  # [B, 1, L, start+L] bool, True = may attend; None = causal, start 0
        cache: KVCache,
        start: int,  # cache slot of x[:, 0]
    ) -> Tensor:  # [B, L, H] final-normed hidden states
        cos = self.rope_cos[positions].unsqueeze(1).to(x.dtype)  # [B, 1, L, D]
        sin = self.rope_sin[positions].unsqueeze(1).to(x.dtype)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, vision, mask, cache, i, start)
        return self.model.norm(x)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden).float()
