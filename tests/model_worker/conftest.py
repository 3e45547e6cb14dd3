"""Fixtures for the worker's tests: the tiny model loaded once through the real loader."""

from __future__ import annotations

from collections.abc import Callable
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
def make_engine(loaded) -> Callable:
    """A new engine (empty caches) on the shared model; keyword arguments are ``EngineOptions``."""
    from model_worker.engine.engine import MiniGPT4Engine
    from model_worker.engine.options import EngineOptions

    def make(max_batch_size: int = 8, **options: object) -> MiniGPT4Engine:
        return MiniGPT4Engine(loaded, options=EngineOptions(max_batch_size=max_batch_size, **options))

    return make
