"""The flags that say how the model runs (device, precision, quantization, memory budget): one definition
for ``generate``, ``embed`` and ``serve``."""

from __future__ import annotations

import argparse

from model_worker.wire.choices import DEFAULT_QUANTIZE, DTYPE_CHOICES, QUANTIZE_CHOICES


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype`` and ``--quantize``."""
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="precision of the language model and of the ViT's matrices; auto: float16 on CUDA, "
                             "on CPU bfloat16 for the real weights and float32 for tiny ones (default auto)")
    parser.add_argument("--quantize", default=DEFAULT_QUANTIZE, choices=QUANTIZE_CHOICES,
                        help="weight-only quantization of the language model (torchao): int8 halves its memory "
                             "against bfloat16, int4 quarters it; the image path keeps its precision "
                             f"(default {DEFAULT_QUANTIZE})")


def add_memory_budget_argument(parser: argparse.ArgumentParser) -> None:
    """``--memory-budget-gb``: memory for the KV cache, prefix cache and activations, beyond the weights."""
    parser.add_argument("--memory-budget-gb", type=_positive_float, default=None, metavar="GB",
                        help="memory in GiB the worker may use beyond its weights (KV cache of the running answers, "
                             "prefix cache, working space); default: 90%% of what is free once the weights "
                             "are loaded (GPU memory on CUDA, available RAM on CPU)")


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value
