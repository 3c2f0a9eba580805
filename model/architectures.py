"""config -> the module class of its variant, built from the config alone (weights come later)."""

from __future__ import annotations

from torch import nn

from model.config import GLM4V, ModelConfig
from model.glm import ChatGLMForConditionalGeneration
from model.model import CogVLMForCausalLM


def build_model(cfg: ModelConfig) -> nn.Module:
    """CogVLM, CogVLM2 and CogAgent share CogVLMForCausalLM (a config and a few branches);
    GLM-4V has its own language model and key names. Both offer the same generation interface."""
    if cfg.variant == GLM4V:
        return ChatGLMForConditionalGeneration(cfg)
    return CogVLMForCausalLM(cfg)
