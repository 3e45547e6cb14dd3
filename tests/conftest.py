"""Shared fixtures: tiny random weights in the real file formats, and a real worker process."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights directory written by ``make-tiny`` (the four artefacts plus arch.json)."""
    from model_worker.model.tiny import make_tiny

    out = tmp_path_factory.mktemp("tiny-weights")
    make_tiny(out, seed=0)
    return out


@pytest.fixture(scope="session")
def worker(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real ``python -m model_worker serve`` process on the tiny weights, shared by the session."""
    from tests.support.worker import run_worker

    with run_worker(tiny_weights, tmp_path_factory.mktemp("worker")) as handle:
        yield handle
