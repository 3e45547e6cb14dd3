"""Fixtures for the throughput tests: the tiny model loaded once, and engines over it with fresh caches."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from model_worker.engine.engine import MiniGPT4Engine
from model_worker.engine.options import EngineOptions


@pytest.fixture(scope="session")
def loaded_tiny(tiny_weights: Path):
    """The tiny model loaded through the real loader on CPU (float32)."""
    from model_worker.model.loader import load_model

    torch.set_num_threads(1)
    return load_model(tiny_weights, device="cpu", use_cache=False)


@pytest.fixture
def make_engine(loaded_tiny) -> Callable[..., MiniGPT4Engine]:
    """A new engine (empty caches) on the shared model; keyword arguments are :class:`EngineOptions`."""

    def make(max_batch_size: int = 8, **options: object) -> MiniGPT4Engine:
        return MiniGPT4Engine(loaded_tiny, options=EngineOptions(max_batch_size=max_batch_size, **options))

    return make


def png(color: tuple[int, int, int], size: tuple[int, int] = (96, 80)) -> bytes:
    """A small two-coloured PNG (distinct colours give distinct hashes and embeddings)."""
    buffer = io.BytesIO()
    image = Image.new("RGB", size, color)
    image.paste((255 - color[0], color[1], 90), (10, 12, 50, 40))
    image.save(buffer, "PNG")
    return buffer.getvalue()
