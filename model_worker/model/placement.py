"""Lean loading: every weight goes from its source straight to its dtype and device, one block at a time.

The model is built on the meta device. Each tensor is taken from the source (the bundle reads it from the
file, not through a memory map; a dict of source tensors hands it over and forgets it), cast as
:func:`precision_plan` says, moved to the device and set on the model. A large matrix is read and cast a
slice of rows at a time into its final tensor; a Linear the quantization replaces is quantized straight
from the source (int8: slice by slice; int4: from one float copy of that matrix). So beside the final
weights there is at most one slice, or one matrix of a layer: never a second full copy.
"""

from __future__ import annotations

import ctypes
import itertools
import re
from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from torch import nn

from model_worker.model.minigpt4 import MiniGPT4, autocast_dtype_for, materialize_buffers, precision_plan
from model_worker.model.quantize import Int8WeightOnlyLinear, quantize_linear, quantized_linears, row_slices

# Tensors of one repeated block are placed (and quantized) together.
_BLOCK = re.compile(r"^((?:llm\.gpt_neox\.layers|visual_encoder\.blocks|qformer\.encoder\.layer)\.\d+)\.")
_LLM_LAYER = re.compile(r"^llm\.gpt_neox\.layers\.(\d+)$")


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


class TensorSource(Protocol):
    """Where the weights come from: their shapes up front, then each tensor, whole or by rows, once."""

    def shapes(self) -> dict[str, torch.Size]: ...

    def take(self, name: str) -> torch.Tensor: ...

    def take_rows(self, name: str, start: int, stop: int) -> torch.Tensor: ...


class DictTensors:
    """Tensors already in memory (read from the published files); each is dropped once taken."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self._tensors = tensors

    def shapes(self) -> dict[str, torch.Size]:
        return {name: tensor.shape for name, tensor in self._tensors.items()}

    def take(self, name: str) -> torch.Tensor:
        return self._tensors.pop(name)

    def take_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        rows = self._tensors[name][start:stop]
        if stop >= self._tensors[name].shape[0]:
            del self._tensors[name]
        return rows


def weight_groups(names: list[str]) -> Iterator[tuple[str, list[str]]]:
    """``(group, names)`` in model order: one group per block (ViT block, Q-Former layer, LLM layer),
    otherwise one per module."""
    def group_of(name: str) -> str:
        block = _BLOCK.match(name)
        return block.group(1) if block else name.rpartition(".")[0]

    for group, members in itertools.groupby(names, key=group_of):
        yield group, list(members)


def place_weights(model: MiniGPT4, source: TensorSource, *, device: torch.device, dtype: torch.dtype,
                  quantize: str = "none", progress: Callable[[str], None] | None = None) -> MiniGPT4:
    """Fill the meta ``model`` from ``source`` on ``device``: the reference's precision for ``dtype``, the
    language model's Linears quantized as ``quantize`` says, each as soon as its bias is in place."""
    plan, quantized, shapes = precision_plan(model, dtype), quantized_linears(model, quantize), source.shapes()
    for group, members in weight_groups(list(model.state_dict())):
        for name in members:
            if name.removesuffix(".weight") not in quantized:
                _set_parameter(model, name, read_placed(source, name, shapes[name], device=device, dtype=plan[name]))
        for module_name, mode in quantized.items():
            if module_name == group or module_name.startswith(group + "."):
                _place_quantized(model, module_name, mode, source, shapes, device=device, dtype=dtype)
        release_freed_memory()
        if progress and _LLM_LAYER.match(group):
            progress(f"placed {group}")
    materialize_buffers(model, device)
    model.autocast_dtype = autocast_dtype_for(dtype)
    return model


def read_placed(source: TensorSource, name: str, shape: torch.Size, *, device: torch.device,
                dtype: torch.dtype) -> torch.Tensor:
    """``name`` on ``device`` in ``dtype``; a large matrix is read and cast a slice of rows at a time into
    its final tensor, so that no second copy of it exists."""
    slices = row_slices(shape) if len(shape) >= 2 else [(0, shape[0] if shape else 0)]
    if len(slices) <= 1:
        return source.take(name).to(device=device, dtype=dtype)
    out = torch.empty(shape, dtype=dtype, device=device)
    for start, stop in slices:
        out[start:stop] = source.take_rows(name, start, stop)
    return out


def release_freed_memory() -> None:
    """Hand memory freed inside the heap back to the system (glibc's ``malloc_trim``; nothing elsewhere).
    The casts and slices of loading free thousands of blocks below malloc's mmap threshold; without this
    about 1.2 GB of them stayed resident after loading the real-size model in int8."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _set_parameter(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    model.get_submodule(module_name)._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)


def _place_quantized(model: nn.Module, module_name: str, mode: str, source: TensorSource,
                     shapes: dict[str, torch.Size], *, device: torch.device, dtype: torch.dtype) -> None:
    """Quantize one Linear straight from the source (int8: by slices of rows) and put it in its place."""
    weight_name = f"{module_name}.weight"
    linear = model.get_submodule(module_name)
    if mode == "int8":
        def read_rows(start: int, stop: int) -> torch.Tensor:
            return source.take_rows(weight_name, start, stop)

        quantized = Int8WeightOnlyLinear.from_rows(read_rows, shapes[weight_name], dtype=dtype, device=device,
                                                   bias=linear.bias)
    else:
        weight = read_placed(source, weight_name, shapes[weight_name], device=device, dtype=dtype)
        linear._parameters["weight"] = nn.Parameter(weight, requires_grad=False)
        quantized = quantize_linear(linear, mode)
    parent_name, _, leaf = module_name.rpartition(".")
    setattr(model.get_submodule(parent_name), leaf, quantized)
