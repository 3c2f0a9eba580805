"""Tiny checkpoints of every variant, written once per session; every model test runs on each."""

from __future__ import annotations

import pytest
import torch

from model.api import VisualExpertModel
from model.tiny import write_tiny_checkpoint

VARIANTS = ["cogvlm", "cogvlm2", "cogagent", "glm4v"]


@pytest.fixture(scope="session", params=VARIANTS)
def variant(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_dir(variant, tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp(f"tiny-{variant}"), variant, seed=0)


@pytest.fixture(scope="session")
def vem(tiny_dir) -> VisualExpertModel:
    return VisualExpertModel.load(tiny_dir, device="cpu", dtype=torch.float32)
