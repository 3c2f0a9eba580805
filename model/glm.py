"""GLM-4V-9B: the GLM-4-9B language model (no visual experts) with CogVLM2's vision recipe.

Facts follow shared/spec/glm-4v.md ("spec" in comments). Module and parameter names mirror the
released keys (`transformer.*`), so loading is the same strict name match as for CogVLM. The
vision tower is model.model.VisionTower with GLM-4V's branches; the interface (`embed`, `forward`,
`logits`, `encode_images`, `lm_head`, `init_rope`) is CogVLMForCausalLM's, so generation is shared.

Shapes: B batch, L new tokens, S keys seen, H hidden, A query heads, G key/value groups, D head dim
(kv_channels), R = D/2 rotated dims, F ffn hidden, V padded vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.cogagent import rotate_pairs
from model.config import ModelConfig
from model.model import KVCache, RMSNorm, VisionTower, grouped_attention


def apply_partial_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B, heads, L, D]; cos/sin [B, 1, L, R]: the first R dims rotate as adjacent pairs, the rest pass."""
    # spec: partial and interleaved: (x[2i], x[2i+1]) rotate by pos * theta_i; dims R.. pass through
    r = cos.shape[-1]
    rotated, passed = x[..., :r], x[..., r:]
    return torch.cat([rotated * cos + rotate_pairs(rotated) * sin, passed], dim=-1)


class GLMAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.a, self.g, self.d = cfg.num_attention_heads, cfg.num_kv_heads, cfg.head_dim
        # spec: fused rows are all query heads, then the G key groups, then the G value groups; with bias
        self.query_key_value = nn.Linear(cfg.hidden_size, (self.a + 2 * self.g) * self.d, bias=True)
        self.dense = nn.Linear(self.a * self.d, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, cache: KVCache, layer: int, start: int) -> Tensor:
        b, l, _ = x.shape
        q, k, v = self.query_key_value(x).split([self.a * self.d, self.g * self.d, self.g * self.d], dim=-1)
        q = q.view(b, l, self.a, self.d).transpose(1, 2)  # [B, A, L, D]
        k = k.view(b, l, self.g, self.d).transpose(1, 2)  # [B, G, L, D]
        v = v.view(b, l, self.g, self.d).transpose(1, 2)
        q, k = apply_partial_rope(q, cos, sin), apply_partial_rope(k, cos, sin)
        k, v = cache.update(layer, start, k, v)  # [B, G, S, D]
        y = grouped_attention(q, k, v, mask)  # spec: head h reads group h // (A/G); scale D^-0.5
        return self.dense(y.transpose(1, 2).reshape(b, l, self.a * self.d))


class GLMMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.dense_4h_to_h = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.dense_h_to_4h(x).chunk(2, dim=-1)  # spec: rows 0..F-1 gate (SiLU), F..2F-1 up
        return self.dense_4h_to_h(F.silu(gate) * up)


class GLMBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attention = GLMAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = GLMMLP(cfg)

    def forward(self, h, cos, sin, mask, cache, layer, start) -> Tensor:
        # spec: pre-norm residuals (apply_residual_connection_post_layernorm false)
        h = h + self.self_attention(self.input_layernorm(h), cos, sin, mask, cache, layer, start)
        return h + self.mlp(self.post_attention_layernorm(h))


class GLMEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(GLMBlock(cfg) for _ in range(cfg.num_hidden_layers))
        self.final_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)  # spec: post_layer_norm


class GLMEmbedding(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)


class GLMTransformer(nn.Module):
    """Named `transformer` in the checkpoint; also holds the vision tower."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embedding = GLMEmbedding(cfg)
        self.encoder = GLMEncoder(cfg)
        self.output_layer = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)  # spec: untied
        self.vision = VisionTower(cfg)


class ChatGLMForConditionalGeneration(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.transformer = GLMTransformer(cfg)
        self.init_rope()

    @property
    def lm_head(self) -> nn.Linear:  # the name generation uses for the output projection
        return self.transformer.output_layer

    @property
    def vision_tower(self) -> VisionTower:
        return self.transformer.vision

    def init_rope(self, device=None, dtype=None, precision: str = "official") -> None:
        """(Re)compute the rotary tables, fp32, one row per position id; not part of the checkpoint.

        dtype and precision are CogVLMForCausalLM.init_rope's: GLM-4's official code builds its
        tables in fp32 whatever the weights' dtype (spec: glm-4v.md), so every precision is that."""
        self.rope_precision = "fp32"
        cfg = self.config
        rotary = cfg.head_dim // 2  # spec: theta_i = base^(-2i/R) over R = D/2 dims
        theta = 1.0 / cfg.rope_base ** (torch.arange(0, rotary, 2, device=device).float() / rotary)
        angles = torch.arange(cfg.max_position_embeddings, device=device).float()[:, None] * theta
        angles = angles.repeat_interleave(2, dim=-1)  # [positions, R], adjacent-pair layout
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)

    def encode_images(self, pixel_values: Tensor) -> Tensor:  # [N, 3, S, S] -> [N, image tokens, H]
        return self.transformer.vision(pixel_values.to(self.lm_head.weight.dtype))

    def embed(self, ids: Tensor) -> Tensor:
        return self.transformer.embedding.word_embeddings(ids)

    def forward(self, x: Tensor, positions: Tensor, vision: Tensor | None, mask: Tensor | None, cache: KVCache,
                start: int) -> Tensor:
        """CogVLMForCausalLM.forward's contract; `vision` is ignored (spec: no visual experts)."""
        # spec: tables built in fp32, rounded to the model dtype before use (the official bf16 behaviour)
        cos = self.rope_cos[positions].unsqueeze(1).to(x.dtype)  # [B, 1, L, R]
        sin = self.rope_sin[positions].unsqueeze(1).to(x.dtype)
        for i, layer in enumerate(self.transformer.encoder.layers):
            x = layer(x, cos, sin, mask, cache, i, start)
        return self.transformer.encoder.final_layernorm(x)

    def logits(self, hidden: Tensor) -> Tensor:
        # spec: the padding rows past the tokenizer are kept and not masked, as in the official code
        return self.lm_head(hidden).float()
