"""CogAgent's additions to CogVLM v1: the high-resolution cross tower and the cross-attention.

Facts follow shared/spec/cogagent.md ("spec" in comments). Module and parameter names mirror the
released keys under `model.cross_vision.` and `model.layers.N.cross_attn.`.

Shapes: N images, P = (Sx/14)^2 high-res patches, W tower width (1024), Hx heads of dx (16 x 64),
M MLP hidden (2730), B rows, L new tokens, U encoded images, C cross width (1024), Hq heads of d
(32 x 32) in the cross-attention, H language hidden.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import CrossVisionConfig, ModelConfig

# ----------------------------------------------------------------------------- high-res tower (EVA02-CLIP-L)


def rope_2d_tables(x: CrossVisionConfig, device) -> tuple[Tensor, Tensor]:
    """cos, sin [P, dx] in fp32: the first dx/2 dims rotate by the patch row, the last by the column."""
    # spec: f_m = 10000^(-2m/h), h = dx/2, m < h/2, each used for an adjacent pair of dims
    half = x.head_width // 2
    freqs = 1.0 / 10000 ** (torch.arange(0, half, 2, device=device).float() / half)  # [h/2]
    # spec: positions interpolated to the pre-training grid: t_i = i / grid * pt_hw_seq_len
    t = torch.arange(x.grid, device=device).float() / x.grid * x.pt_hw_seq_len
    angles = (t[:, None] * freqs).repeat_interleave(2, dim=-1)  # [g, h]: f0, f0, f1, f1, ...
    rows = angles[:, None, :].expand(x.grid, x.grid, half)
    cols = angles[None, :, :].expand(x.grid, x.grid, half)
    table = torch.cat([rows, cols], dim=-1).reshape(x.grid * x.grid, 2 * half)  # patch p = row * g + col
    return table.cos(), table.sin()


def rotate_pairs(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): adjacent pairs, not rotate-half."""
    x = x.unflatten(-1, (-1, 2))
    return torch.stack([-x[..., 1], x[..., 0]], dim=-1).flatten(-2)


def apply_rope_2d(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # spec: the tables are fp32; apply in fp32 and cast back to the activation dtype
    xf = x.float()
    return (xf * cos + rotate_pairs(xf) * sin).to(x.dtype)


class CrossPatchEmbed(nn.Module):
    def __init__(self, x: CrossVisionConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, x.width, kernel_size=x.patch_size, stride=x.patch_size)


class CrossVisionAttention(nn.Module):
    def __init__(self, x: CrossVisionConfig):
        super().__init__()
        self.num_heads = x.num_heads
        self.q_proj = nn.Linear(x.width, x.width, bias=False)
        self.k_proj = nn.Linear(x.width, x.width, bias=False)
        self.v_proj = nn.Linear(x.width, x.width, bias=False)
        self.q_bias = nn.Parameter(torch.empty(x.width))  # spec: q and v have biases, k has none
        self.v_bias = nn.Parameter(torch.empty(x.width))
        self.inner_attn_ln = nn.LayerNorm(x.width, eps=x.layer_norm_eps)
        self.proj = nn.Linear(x.width, x.width)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor) -> Tensor:  # [N, 1+P, W]
        n, p, _ = h.shape
        q = F.linear(h, self.q_proj.weight, self.q_bias).view(n, p, self.num_heads, -1).transpose(1, 2)
        k = self.k_proj(h).view(n, p, self.num_heads, -1).transpose(1, 2)  # [N, Hx, 1+P, dx]
        v = F.linear(h, self.v_proj.weight, self.v_bias).view(n, p, self.num_heads, -1).transpose(1, 2)
        # spec: 2-D RoPE on the patch positions only; cls (position 0) is not rotated
        q = torch.cat([q[:, :, :1], apply_rope_2d(q[:, :, 1:], cos, sin)], dim=2)
        k = torch.cat([k[:, :, :1], apply_rope_2d(k[:, :, 1:], cos, sin)], dim=2)
        y = F.scaled_dot_product_attention(q, k, v)  # spec: full attention, no mask, scale dx^-0.5
        return self.proj(self.inner_attn_ln(y.transpose(1, 2).reshape(n, p, -1)))


class CrossVisionMLP(nn.Module):
    def __init__(self, x: CrossVisionConfig):
        super().__init__()
        self.w1 = nn.Linear(x.width, x.mlp_hidden)
        self.w2 = nn.Linear(x.width, x.mlp_hidden)
        self.ffn_ln = nn.LayerNorm(x.mlp_hidden, eps=x.layer_norm_eps)
        self.w3 = nn.Linear(x.mlp_hidden, x.width)

    def forward(self, h: Tensor) -> Tensor:
        return self.w3(self.ffn_ln(F.silu(self.w1(h)) * self.w2(h)))  # spec: SwiGLU with a norm


class CrossVisionBlock(nn.Module):
    def __init__(self, x: CrossVisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(x.width, eps=x.layer_norm_eps)
        self.attn = CrossVisionAttention(x)
        self.norm2 = nn.LayerNorm(x.width, eps=x.layer_norm_eps)
        self.mlp = CrossVisionMLP(x)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        h = h + self.attn(self.norm1(h), cos, sin)  # spec: PRE-norm, unlike the low-res tower
        return h + self.mlp(self.norm2(h))


class EVA02Model(nn.Module):
    """`vit.model`: the tower proper. `norm` and `head` are stored in the checkpoint but never used."""

    def __init__(self, x: CrossVisionConfig):
        super().__init__()
        self.config = x
        self.patch_embed = CrossPatchEmbed(x)
        self.cls_token = nn.Parameter(torch.empty(1, 1, x.width))
        self.pos_embed = nn.Parameter(torch.empty(1, x.grid * x.grid + 1, x.width))
        self.blocks = nn.ModuleList(CrossVisionBlock(x) for _ in range(x.layers))
        self.norm = nn.LayerNorm(x.width, eps=x.layer_norm_eps)
        self.head = nn.Linear(x.width, x.embed_dim)
        self._rope: dict[torch.device, tuple[Tensor, Tensor]] = {}  # deterministic; recomputed, not loaded

    def forward(self, images: Tensor) -> Tensor:  # [N, 3, Sx, Sx] -> [N, 1+P, W]
        if images.device not in self._rope:
            self._rope[images.device] = rope_2d_tables(self.config, images.device)
        cos, sin = self._rope[images.device]
        h = self.patch_embed.proj(images).flatten(2).transpose(1, 2)  # [N, P, W], row-major
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1) + self.pos_embed  # spec: no interpolation
        for block in self.blocks[:-1]:  # spec: the official code skips the last block (its weights are stored)
            h = block(h, cos, sin)
        return h  # spec: no final norm, no head


class CrossVisionTower(nn.Module):
    """`model.cross_vision`: 1120 px image -> the encoder outputs every decoder layer attends to."""

    def __init__(self, x: CrossVisionConfig):
        super().__init__()
        self.vit = nn.Module()  # the released keys read vit.model.*
        self.vit.model = EVA02Model(x)
        self.pos_embed = nn.Parameter(torch.empty(x.grid * x.grid, x.width))

    def forward(self, images: Tensor) -> Tensor:  # [N, 3, Sx, Sx] -> [N, P, W]
        return self.vit.model(images)[:, 1:] + self.pos_embed  # spec: drop cls, add the outer table


# ----------------------------------------------------------------------------- cross-attention in the decoder


@dataclass
class CrossKV:
    """Every layer's cross-attention keys/values, once per encoded image, and which image each row reads.

    Rows that share an image are never given copies: `attend` stacks their queries as extra query rows of
    that image's attention call (the cross-attention has no mask, so rows do not interact).
    """

    k: Tensor  # [layers, U, Hq, P, d]
    v: Tensor
    image_of_row: Tensor  # [B]
    _slot: Tensor = field(init=False, repr=False)  # [B] index of the row among its image's rows
    _gather: Tensor = field(init=False, repr=False)  # [U, R] row of each (image, slot); B = filler
    _one_row_per_image: bool = field(init=False, repr=False)

    def __post_init__(self):
        u, b = self.k.shape[1], self.image_of_row.shape[0]
        rows = torch.arange(b, device=self.image_of_row.device)
        order = torch.argsort(self.image_of_row, stable=True)
        counts = torch.bincount(self.image_of_row, minlength=u)
        starts = counts.cumsum(0) - counts
        self._slot = torch.empty_like(rows)
        self._slot[order] = rows - starts[self.image_of_row[order]]
        width = int(counts.max()) if b else 0
        self._gather = torch.full((u, width), b, dtype=torch.long, device=rows.device)
        self._gather[self.image_of_row, self._slot] = rows
        self._one_row_per_image = b == u and bool((self.image_of_row == rows).all())

    def for_rows(self, image_of_row: Tensor) -> "CrossKV":
        """The same keys/values (no copy) read by a new set of rows."""
        return CrossKV(self.k, self.v, image_of_row)

    def attend(self, layer: int, q: Tensor) -> Tensor:  # [B, Hq, L, d] -> [B, Hq, L, d]
        k, v = self.k[layer], self.v[layer]  # [U, Hq, P, d]
        # spec: softmax over the image's keys, no mask of any kind, scale d^-0.5
        if self._one_row_per_image:
            return F.scaled_dot_product_attention(q, k, v)
        b, hq, l, d = q.shape
        u, r = self._gather.shape
        q = torch.cat([q, q.new_zeros(1, hq, l, d)])[self._gather]  # [U, R, Hq, L, d]; filler rows are zero
        q = q.permute(0, 2, 1, 3, 4).reshape(u, hq, r * l, d)
        y = F.scaled_dot_product_attention(q, k, v).view(u, hq, r, l, d)
        return y[self.image_of_row, :, self._slot]  # [B, Hq, L, d]


class CrossAttention(nn.Module):
    """`model.layers.N.cross_attn`: every position queries its row's image; one weight set, no experts."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = cfg.cross_compute_hidden_size
        self.num_heads, self.width = cfg.num_attention_heads, c
        self.query = nn.Linear(cfg.hidden_size, c, bias=False)
        self.key_value = nn.Linear(cfg.cross_vision.width, 2 * c, bias=False)
        self.dense = nn.Linear(c, cfg.hidden_size, bias=False)

    def key_values(self, encoded: Tensor) -> tuple[Tensor, Tensor]:  # [U, P, W] -> 2 x [U, Hq, P, d]
        u, p, _ = encoded.shape
        # spec: output rows are k (first C) then v, heads contiguous; no RoPE on either side
        k, v = self.key_value(encoded).split(self.width, dim=-1)
        return (t.view(u, p, self.num_heads, -1).transpose(1, 2) for t in (k, v))

    def forward(self, h: Tensor, cross: CrossKV, layer: int) -> Tensor:  # [B, L, H] -> [B, L, H]
        b, l, _ = h.shape
        q = self.query(h).view(b, l, self.num_heads, -1).transpose(1, 2)  # [B, Hq, L, d]
        y = cross.attend(layer, q)
        return self.dense(y.transpose(1, 2).reshape(b, l, self.width))
