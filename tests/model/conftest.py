"""Fixtures for the model tests: the tiny weights loaded once on CPU, and a private copy to modify."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def loaded(tiny_weights: Path):
    """The tiny model loaded through the real loader on CPU (float32)."""
    from model_worker.model.loader import load_model

    torch.set_num_threads(1)  # tiny matmuls: threads only add contention on a shared machine
    return load_model(tiny_weights, device="cpu", use_cache=False)


@pytest.fixture
def weights_copy(tiny_weights: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny weights (without any cached bundle) that a test may change."""
    out = tmp_path / "weights"
    shutil.copytree(tiny_weights, out, ignore=shutil.ignore_patterns(".minigpt4-bundle"))
    return out
