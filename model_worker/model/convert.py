"""Explicit conversion of the four source artefacts into a bundle directory (``convert`` command)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from model_worker.model.arch import load_arch
from model_worker.model.bundle import write_bundle
from model_worker.model.minigpt4 import build_empty_model
from model_worker.model.weights import LLM_DIR, check_tensors, read_llm_config, read_sources


def convert_weights(weights: Path, out: Path, *, progress: Callable[[str], None] | None = None) -> Path:
    """Read, check and write every tensor (at its source precision) into ``out``; returns the bundle file."""
    weights, out = Path(weights), Path(out)
    arch = load_arch(weights)
    model = build_empty_model(arch, read_llm_config(weights / LLM_DIR))
    expected = {name: tensor.shape for name, tensor in model.state_dict().items()}
    tensors = read_sources(weights, arch, expected=expected, progress=progress)
    check_tensors(tensors, expected)
    if progress:
        progress(f"writing {out}")
    return write_bundle(out, tensors, weights_dir=weights, arch=arch)
