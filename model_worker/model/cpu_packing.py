"""The language model's bfloat16 Linears in oneDNN's packed layout on CPU.

``aten.linear`` on a bfloat16 weight reads it in torch's plain row-major layout; decoding one token (a
matrix-vector product per Linear) then ran at about 16 GB/s on a 2-core AVX-512-BF16 CPU against 35-64 GB/s
of memory bandwidth. The same weight reordered once into oneDNN's blocked layout
(``mkldnn._reorder_linear_weight``, what inductor's weight freezing does) and multiplied with
``mkldnn._linear_pointwise`` ran at about 33 GB/s, with bit-identical results for one row, a batch of rows
and a prompt (``benchmarks.small_hosts``; README, "Small hosts"). The packed weight takes the same bytes and
replaces the plain one, so memory does not grow.

Float32 keeps torch's own path: MKL's packed float32 kernel gains less and rounds differently from the
reference loop that greedy answers are compared with.
"""

from __future__ import annotations

import torch
from torch import nn

from model_worker.model.placement import release_freed_memory


class OneDnnLinear(nn.Module):
    """A Linear whose weight is held in oneDNN's packed layout (inference only)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight, 1))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # oneDNN rounds a strided input differently; a contiguous one gives aten.linear's exact result.
        return torch.ops.mkldnn._linear_pointwise(hidden.contiguous(), self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN packed"


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """bfloat16 on a CPU whose oneDNN computes it natively (packing is skipped everywhere else; float16 too,
    which no CPU this project has measured on computes natively)."""
    return (device.type == "cpu" and dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pack_language_model(model: nn.Module) -> int:
    """Replace every float Linear of ``model.llm`` (its layers and output head) with a :class:`OneDnnLinear`,
    one at a time so that only one weight is ever held twice (malloc would otherwise keep the freed plain
    weights' pages while the packed ones take new ones); returns how many were packed. Quantized
    Linears (other module types, or a quantized tensor subclass as the weight) stay as they are; an output head
    tied to the input embedding too."""
    tied = model.llm.get_input_embeddings().weight
    names = [name for name, module in model.llm.named_modules()
             if type(module) is nn.Linear and type(module.weight) is nn.Parameter and module.weight is not tied]
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.llm.get_submodule(parent_name) if parent_name else model.llm
        setattr(parent, leaf, OneDnnLinear(getattr(parent, leaf)))
        release_freed_memory()  # the plain weight, before the next packing can reuse its pages
    return len(names)
