"""Lean loading: every weight goes from its source straight to its dtype and device, one layer at a time.

The model is built on the meta device. Each tensor is taken from the source (the bundle reads it with
``pread``; a dict of source tensors hands it over and forgets it), cast as :func:`precision_plan` says,
moved to the device and set on the model. When a transformer layer (or the output head) is complete it is
quantized at once, so at most one layer's float copy exists beside the final weights: peak memory is the
final footprint plus about one layer, never a second full copy.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from torch import nn

from model_worker.model.minigpt4 import MiniGPT4, autocast_dtype_for, materialize_buffers, precision_plan
from model_worker.model.quantize import quantize_llm_part

# Tensors of one repeated block are placed (and quantized) together.
_BLOCK = re.compile(r"^((?:llm\.gpt_neox\.layers|visual_encoder\.blocks|qformer\.encoder\.layer)\.\d+)\.")
_LLM_LAYER = re.compile(r"^llm\.gpt_neox\.layers\.(\d+)$")
_OUTPUT_HEAD = "llm.lm_head"


class TensorSource(Protocol):
    """Where the weights come from: their shapes up front, then each tensor once."""

    def shapes(self) -> dict[str, torch.Size]: ...

    def take(self, name: str) -> torch.Tensor: ...


class DictTensors:
    """Tensors already in memory (read from the published files); each is dropped once taken."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self._tensors = tensors

    def shapes(self) -> dict[str, torch.Size]:
        return {name: tensor.shape for name, tensor in self._tensors.items()}

    def take(self, name: str) -> torch.Tensor:
        return self._tensors.pop(name)


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
    """Fill the meta ``model`` from ``source`` on ``device``: the reference's precision for ``dtype``,
    the language model's Linears quantized as ``quantize`` says, layer by layer."""
    plan = precision_plan(model, dtype)
    names = list(model.state_dict().keys())
    for group, members in weight_groups(names):
        for name in members:
            _set_parameter(model, name, source.take(name).to(device=device, dtype=plan[name]))
        _quantize_group(model, group, quantize)
        if progress and _LLM_LAYER.match(group):
            progress(f"placed {group}")
    materialize_buffers(model, device)
    model.autocast_dtype = autocast_dtype_for(dtype)
    return model


def _set_parameter(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    model.get_submodule(module_name)._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)


def _quantize_group(model: MiniGPT4, group: str, quantize: str) -> None:
    if quantize == "none":
        return
    layer = _LLM_LAYER.match(group)
    if layer:
        quantize_llm_part(model.llm.gpt_neox.layers[int(layer.group(1))], quantize)
    elif group == _OUTPUT_HEAD:
        model.llm.lm_head = quantize_llm_part(model.llm.lm_head, quantize, is_output_head=True)
