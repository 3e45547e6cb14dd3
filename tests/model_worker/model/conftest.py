"""Fixtures for the model tests: a private copy of the tiny weights to modify."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def weights_copy(tiny_weights: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny weights (without any cached bundle) that a test may change."""
    out = tmp_path / "weights"
    shutil.copytree(tiny_weights, out, ignore=shutil.ignore_patterns(".minigpt4-bundle"))
    return out
