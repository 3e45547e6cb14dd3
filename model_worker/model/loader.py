"""Load the model for a device: from a bundle (fast) or from the sources (then cache), placed lean."""

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
from model_worker.model.bundle import BundleTensors, default_cache_dir, is_bundle_dir, is_fresh, write_bundle
from model_worker.model.cpu_packing import can_pack, pack_language_model
from model_worker.model.minigpt4 import MiniGPT4, build_empty_model
from model_worker.model.placement import DictTensors, TensorSource, place_weights
from model_worker.model.quantize import check_quantize, module_bytes
from model_worker.model.tokenizer import Tokenizer
from model_worker.model.weights import (
    LLM_DIR,
    WeightsError,
    check_shapes,
    check_tensors,
    read_llm_config,
    read_sources,
)
from model_worker.wire.choices import DTYPE_CHOICES

log = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float32": torch.float32, "fp32": torch.float32}
#: ``--dtype auto`` on CPU: bfloat16 from this many parameters (the real model has 4.9 B), float32 below.
CPU_BFLOAT16_FROM_PARAMS = 500_000_000


@dataclass
class LoadedModel:
    model: MiniGPT4
    tokenizer: Tokenizer
    arch: Arch
    llm_config: GPTNeoXConfig
    device: torch.device
    dtype: torch.dtype  # the language model's (the image path's float32 parts aside)
    source: str  # "bundle" or "sources"
    load_seconds: float
    quantize: str = "none"
    weights_bytes: int = 0  # parameters and buffers as placed (quantized ones at their stored size)

    def describe(self) -> dict[str, str]:
        """What runs, as ``generate --json`` and ``/readyz`` report it."""
        return {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                "quantize": self.quantize}


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


def resolve_dtype(dtype: str, device: torch.device, *, num_params: int = 0, quantize: str = "none") -> torch.dtype:
    """``auto``: float16 on CUDA (the reference; bfloat16 under int4, whose CUDA kernel takes nothing else);
    on CPU bfloat16 for weights of real size and float32 for small ones. An explicit dtype is honoured or
    refused, never silently changed."""
    if dtype not in _DTYPES and dtype != "auto":
        raise ValueError(f"unknown dtype {dtype!r}; use {', '.join(DTYPE_CHOICES)}")
    if dtype == "auto":
        if device.type != "cpu":
            return torch.bfloat16 if quantize == "int4" else torch.float16
        return torch.bfloat16 if num_params >= CPU_BFLOAT16_FROM_PARAMS else torch.float32
    resolved = _DTYPES[dtype]
    if device.type == "cpu" and resolved != torch.float32:
        _check_cpu_dtype(resolved)
    return resolved


def _check_cpu_dtype(dtype: torch.dtype) -> None:
    """Refuse a reduced precision this torch cannot compute on this CPU (one sentence, no traceback)."""
    try:
        probe = torch.ones(2, 4, dtype=dtype)
        torch.nn.functional.layer_norm(probe @ probe.T, (2,))
        with torch.autocast(device_type="cpu", dtype=dtype):
            torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4))
    except (RuntimeError, TypeError) as exc:
        name = str(dtype).removeprefix("torch.")
        raise ValueError(f"{name} is not supported on this CPU by torch {torch.__version__} ({exc}); "
                         f"use --dtype bfloat16 or float32") from exc


def _open_tensors(weights_dir: Path, model: MiniGPT4, *, use_cache: bool, cache_dir: Path | None,
                  progress: Callable[[str], None]) -> tuple[TensorSource, str]:
    if is_bundle_dir(weights_dir):
        progress("opening the bundle")
        return BundleTensors(weights_dir), "bundle"
    cache = cache_dir or default_cache_dir(weights_dir)
    if use_cache and is_fresh(cache, weights_dir):
        progress("opening the cached bundle")
        return BundleTensors(cache), "bundle"
    expected = model.state_dict().keys()
    tensors = read_sources(weights_dir, model.arch, expected=expected, progress=progress)
    if use_cache:
        check_tensors(tensors, {k: v.shape for k, v in model.state_dict().items()})
        progress("writing the bundle cache")
        try:
            write_bundle(cache, tensors, weights_dir=weights_dir, arch=model.arch)
        except OSError as exc:
            log.warning("could not write the bundle cache in %s: %s", cache, exc)
    return DictTensors(tensors), "sources"


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


def load_model(weights: Path, *, device: str = "auto", dtype: str = "auto", quantize: str = "none",
               use_cache: bool = True, cache_dir: Path | None = None,
               progress: Callable[[str], None] | None = None) -> LoadedModel:
    """Build the model from a weights directory (sources or bundle) and place it on the device, each weight
    straight to its dtype, the language model's matrices quantized as they arrive when ``quantize`` asks."""
    started = time.perf_counter()
    weights = Path(weights)
    report = progress or (lambda message: log.info("loading: %s", message))
    torch_device = resolve_device(device)
    if not weights.is_dir():
        raise WeightsError(f"weights directory {weights} does not exist (python -m model_worker download)")
    try:
        arch = load_arch(weights)
    except ValueError as exc:
        raise WeightsError(f"bad arch.json in {weights}: {exc}") from exc
    llm_config = read_llm_config(weights / LLM_DIR)
    tokenizer = _read_tokenizer(weights / LLM_DIR, llm_config)
    model = build_empty_model(arch, llm_config)
    num_params = sum(p.numel() for p in model.parameters())
    torch_dtype = resolve_dtype(dtype, torch_device, num_params=num_params, quantize=quantize)
    check_quantize(quantize, llm_config=llm_config, device=torch_device, dtype=torch_dtype)
    tensors, source = _open_tensors(weights, model, use_cache=use_cache, cache_dir=cache_dir, progress=report)
    check_shapes(tensors.shapes(), {k: v.shape for k, v in model.state_dict().items()})
    report(f"placing the model on {torch_device} ({torch_dtype}, quantize {quantize})")
    place_weights(model, tensors, device=torch_device, dtype=torch_dtype, quantize=quantize, progress=report)
    if can_pack(torch_device, torch_dtype):
        log.info("packed %d language-model Linears for oneDNN", pack_language_model(model))
    if torch_device.type == "cpu":
        _limit_threads_for_tiny(model)
    seconds = time.perf_counter() - started
    log.info("model loaded from %s (%s) on %s in %.2fs", weights, source, torch_device, seconds)
    return LoadedModel(model, tokenizer, arch, llm_config, torch_device, torch_dtype, source, seconds,
                       quantize=quantize, weights_bytes=module_bytes(model))
