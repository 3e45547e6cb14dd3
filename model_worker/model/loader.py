"""Load the model for a device: from a bundle (fast, memory-mapped) or from the sources (then cache)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GPTNeoXConfig

from model_worker.model.arch import Arch, load_arch
from model_worker.model.bundle import default_cache_dir, is_bundle_dir, is_fresh, read_bundle, write_bundle
from model_worker.model.minigpt4 import MiniGPT4, build_empty_model, materialize_buffers, place_model
from model_worker.model.tokenizer import Tokenizer
from model_worker.model.weights import LLM_DIR, WeightsError, check_tensors, read_llm_config, read_sources

log = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float32": torch.float32, "fp32": torch.float32}


@dataclass
class LoadedModel:
    model: MiniGPT4
    tokenizer: Tokenizer
    arch: Arch
    llm_config: GPTNeoXConfig
    device: torch.device
    dtype: torch.dtype
    source: str  # "bundle" or "sources"
    load_seconds: float


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> float16 on CUDA (the reference), float32 on CPU; CPU always runs in float32."""
    if dtype != "auto" and dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float16, bfloat16 or float32")
    if device.type == "cpu":
        if dtype not in ("auto", "float32", "fp32"):
            log.warning("CPU runs in float32; ignoring dtype %s", dtype)
        return torch.float32
    return torch.float16 if dtype == "auto" else _DTYPES[dtype]


def _load_tensors(weights_dir: Path, model: MiniGPT4, *, use_cache: bool, cache_dir: Path | None,
                  progress: Callable[[str], None]) -> tuple[dict[str, torch.Tensor], str]:
    if is_bundle_dir(weights_dir):
        progress("memory-mapping the bundle")
        return read_bundle(weights_dir), "bundle"
    cache = cache_dir or default_cache_dir(weights_dir)
    if use_cache and is_fresh(cache, weights_dir):
        progress("memory-mapping the cached bundle")
        return read_bundle(cache), "bundle"
    expected = model.state_dict().keys()
    tensors = read_sources(weights_dir, model.arch, expected=expected, progress=progress)
    if use_cache:
        check_tensors(tensors, {k: v.shape for k, v in model.state_dict().items()})
        progress("writing the bundle cache")
        try:
            write_bundle(cache, tensors, weights_dir=weights_dir, arch=model.arch)
        except OSError as exc:
            log.warning("could not write the bundle cache in %s: %s", cache, exc)
    return tensors, "sources"


def _limit_threads_for_tiny(model: MiniGPT4) -> None:
    # Tiny test models gain nothing from intra-op threads, and spinning threads on a busy machine make
    # each step tens of times slower; OMP_NUM_THREADS still overrides.
    if "OMP_NUM_THREADS" not in os.environ and sum(p.numel() for p in model.parameters()) < 10_000_000:
        torch.set_num_threads(1)
        log.info("tiny model on CPU: using one thread")


def _read_tokenizer(llm_dir: Path, llm_config: GPTNeoXConfig) -> Tokenizer:
    if not (llm_dir / "spiece.model").is_file():
        raise WeightsError(f"missing {llm_dir / 'spiece.model'} (rinna's sentencepiece model)")
    tokenizer = Tokenizer(llm_dir)
    if tokenizer.vocab_size > llm_config.vocab_size:
        raise WeightsError(f"spiece.model has {tokenizer.vocab_size} pieces but the model only "
                           f"{llm_config.vocab_size} embeddings")
    return tokenizer


def load_model(weights: Path, *, device: str = "auto", dtype: str = "auto", use_cache: bool = True,
               cache_dir: Path | None = None, progress: Callable[[str], None] | None = None) -> LoadedModel:
    """Build the model from a weights directory (sources or bundle) and place it on the device."""
    started = time.perf_counter()
    weights = Path(weights)
    report = progress or (lambda message: log.info("loading: %s", message))
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if not weights.is_dir():
        raise WeightsError(f"weights directory {weights} does not exist (python -m model_worker download)")
    try:
        arch = load_arch(weights)
    except ValueError as exc:
        raise WeightsError(f"bad arch.json in {weights}: {exc}") from exc
    llm_config = read_llm_config(weights / LLM_DIR)
    tokenizer = _read_tokenizer(weights / LLM_DIR, llm_config)
    model = build_empty_model(arch, llm_config)
    tensors, source = _load_tensors(weights, model, use_cache=use_cache, cache_dir=cache_dir, progress=report)
    check_tensors(tensors, {k: v.shape for k, v in model.state_dict().items()})
    model.load_state_dict(tensors, strict=True, assign=True)
    materialize_buffers(model)
    report(f"placing the model on {torch_device} ({torch_dtype})")
    place_model(model, device=torch_device, dtype=torch_dtype)
    if torch_device.type == "cpu":
        _limit_threads_for_tiny(model)
    seconds = time.perf_counter() - started
    log.info("model loaded from %s (%s) on %s in %.2fs", weights, source, torch_device, seconds)
    return LoadedModel(model, tokenizer, arch, llm_config, torch_device, torch_dtype, source, seconds)
