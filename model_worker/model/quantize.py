"""Weight-only quantization of the language model's Linear layers (``--quantize none|int8|int4``).

The numbers come from torchao: its per-row int8 (``Int8Tensor``) and its group-wise int4 for torch's int4
kernels. The matrix products are torch's own kernels, chosen by measurement on a 2-core AVX-512 CPU
(README, "Small hosts"):

- int8: torchao's int8 weight-only ``linear`` converts the whole int8 weight to the activation dtype on
  every call (its fused kernel only appears under ``torch.compile``), which measured about 5x slower than
  plain bfloat16 on that CPU. So the weight and scales torchao computes are multiplied with
  ``aten._weight_int8pack_mm``, the CPU (and CUDA) kernel inductor itself substitutes for that pattern;
  it reads one byte per weight and ran at the memory bandwidth.
- int4: torchao's int4 weight-only tensors, groups of 128: ``Int4OpaqueTensor`` on CPU
  (``aten._weight_int4pack_mm_for_cpu``) and the tile-packed layout on CUDA (``aten._weight_int4pack_mm``).

Only the transformer layers' Linears and the output head are quantized; the input embedding, the norms and
the whole image path (ViT, Q-Former, projection) keep their float dtype. The output head is int8 under
``int4`` too: it is a tenth of the bytes and the logits are what sampling sees.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from model_worker.wire.choices import QUANTIZE_CHOICES

INT4_GROUP_SIZE = 128
# Slices of 16 Mi elements: torchao's float32 temporaries of 64 MiB are above malloc's mmap threshold,
# so their memory goes back to the system at once.
SLICE_ELEMENTS = 16 * 2**20


class QuantizeError(ValueError):
    """A quantization mode these weights, this device or this dtype cannot run."""


class Int8WeightOnlyLinear(nn.Module):
    """A Linear with an int8 weight and one scale per output row; activations keep their float dtype."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = qweight.shape[1], qweight.shape[0]
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)

    @classmethod
    def from_rows(cls, read_rows: Callable[[int, int], torch.Tensor], shape: torch.Size, *, dtype: torch.dtype,
                  device: torch.device, bias: torch.Tensor | None) -> Int8WeightOnlyLinear:
        """Quantize a weight of ``shape`` per output row (torchao's symmetric int8), reading it a slice of
        rows at a time with ``read_rows(start, stop)``: rows are independent, so no float copy of the whole
        weight and no large float32 temporaries of torchao's ever exist. ``dtype``: the activations'."""
        from torchao.quantization.granularity import PerRow
        from torchao.quantization.quantize_.workflows.int8.int8_tensor import Int8Tensor

        qweight = torch.empty(shape, dtype=torch.int8, device=device)
        scales = torch.empty(shape[0], dtype=dtype, device=device)
        for start, stop in row_slices(shape):
            part = Int8Tensor.from_hp(read_rows(start, stop).to(device=device, dtype=dtype), granularity=PerRow())
            qweight[start:stop] = part.qdata
            scales[start:stop] = part.scale.reshape(-1)  # in the activations' dtype, as the kernel takes them
        return cls(qweight, scales, bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8WeightOnlyLinear:
        """The quantized replacement of a placed Linear."""
        weight = linear.weight.detach()
        bias = None if linear.bias is None else linear.bias.detach()
        return cls.from_rows(lambda start, stop: weight[start:stop], weight.shape, dtype=weight.dtype,
                             device=weight.device, bias=bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, self.in_features).to(self.scales.dtype).contiguous()
        out = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scales)
        out = out.reshape(*hidden.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight-only"


def row_slices(shape: torch.Size) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges of a tensor of ``shape``, each of at most :data:`SLICE_ELEMENTS`
    (one row at least)."""
    rows, row_elements = shape[0], max(1, torch.Size(shape[1:]).numel())
    step = max(1, SLICE_ELEMENTS // row_elements)
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


def check_quantize(mode: str, *, llm_config, device: torch.device, dtype: torch.dtype) -> None:
    """Raise :class:`QuantizeError` with one sentence when ``mode`` cannot run these weights here."""
    if mode not in QUANTIZE_CHOICES:
        raise QuantizeError(f"unknown quantization {mode!r}; use {', '.join(QUANTIZE_CHOICES)}")
    if mode == "none":
        return
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise QuantizeError(f"--quantize {mode} needs float activations, not {dtype}")
    if mode == "int4":
        _check_int4(llm_config, device=device, dtype=dtype)


def _check_int4(llm_config, *, device: torch.device, dtype: torch.dtype) -> None:
    widths = {"hidden_size": llm_config.hidden_size, "intermediate_size": llm_config.intermediate_size}
    bad = [f"{name} {width}" for name, width in widths.items() if width % INT4_GROUP_SIZE]
    if bad:
        raise QuantizeError(f"--quantize int4 needs language-model widths that are multiples of "
                            f"{INT4_GROUP_SIZE}; these weights have {', '.join(bad)} (use int8)")
    if device.type == "cuda" and dtype != torch.bfloat16:
        raise QuantizeError("--quantize int4 on CUDA runs torch's int4 kernel, which takes bfloat16 "
                            "activations: use --dtype bfloat16 or auto")
    if device.type not in ("cpu", "cuda"):
        raise QuantizeError(f"--quantize int4 runs on cpu or cuda, not {device.type}")


def quantize_linear(linear: nn.Linear, mode: str) -> nn.Module:
    """The quantized replacement of one Linear (already on its device, in its float dtype)."""
    if mode == "int8":
        return Int8WeightOnlyLinear.from_linear(linear)
    if mode == "int4":
        return _int4_linear(linear)
    raise QuantizeError(f"no Linear quantization for {mode!r}")


def _int4_linear(linear: nn.Linear) -> nn.Linear:
    from torchao.quantization import quantize_

    if linear.weight.device.type == "cpu":
        from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig

        config = PrototypeInt4WeightOnlyConfig(group_size=INT4_GROUP_SIZE, set_inductor_config=False)
    else:
        from torchao.quantization import Int4WeightOnlyConfig

        config = Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE, int4_packing_format="tile_packed_to_4d",
                                      set_inductor_config=False)
    quantize_(linear, config)
    return linear


def quantized_linears(model: nn.Module, mode: str) -> dict[str, str]:
    """``{module name: mode}`` for the Linears of a MiniGPT4 that ``mode`` quantizes: every Linear of the
    language model's layers, and its output head (int8 under int4 too)."""
    if mode == "none":
        return {}
    layers = model.llm.gpt_neox.layers
    names = {f"llm.gpt_neox.layers.{index}.{name}": mode for index, layer in enumerate(layers)
             for name, module in layer.named_modules() if isinstance(module, nn.Linear)}
    return names | {"llm.lm_head": "int8"}


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds, counting the inner tensors of a quantized tensor subclass."""
    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is None or type(tensor) in (torch.Tensor, nn.Parameter):
        return tensor.numel() * tensor.element_size()
    names, _ = tensor.__tensor_flatten__()
    return sum(tensor_bytes(getattr(tensor, name)) for name in names)


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (quantized ones at their stored size)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(tensor_bytes(t) for t in tensors)
