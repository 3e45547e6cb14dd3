"""Reading the four published artefacts (model.md §2) into tensors under the model's own names.

Every pickle is read with ``torch.load(..., weights_only=True)``: a file that needs code to unpickle is
refused. State dicts are accepted flat or under a ``"model"`` key, in any float precision. Keys the model
does not use (attention buffers, ``t5_proj``, optimizer state, a 40th ViT block, text-side Q-Former
tensors, ``position_ids``) are ignored and counted.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import GPTNeoXConfig

from model_worker.model.arch import Arch
from model_worker.model.qformer import qformer_key
from model_worker.model.vision import vision_key

log = logging.getLogger(__name__)

EVA_FILE = "eva_vit_g.pth"
BLIP2_FILE = "blip2_pretrained_flant5xxl.pth"
PROJECTION_FILE = "checkpoint.pth"
LLM_DIR = "gpt-neox"


class WeightsError(RuntimeError):
    """The weights cannot be used; the message says which file or tensor and why."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A pickled state dict (flat or under ``"model"``), refusing pickles that need code."""
    if not path.is_file():
        raise WeightsError(f"missing weights file {path} (python -m model_worker download fetches it)")
    try:
        loaded = _torch_load(path, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise WeightsError(f"cannot read {path.name}: {str(exc).splitlines()[0]}") from exc
        loaded = _torch_load(path, mmap=False)  # legacy (non-zip) files cannot be memory-mapped
    return _tensors_of(loaded, path)


def _torch_load(path: Path, *, mmap: bool) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if "Unsupported global" in line), None)
        if detail is None:  # not a class reference: the bytes are no (intact) pickle at all
            raise WeightsError(f"cannot read {path.name}: not a torch checkpoint ({str(exc).splitlines()[0]})") from exc
        raise WeightsError(
            f"refusing {path.name}: it needs code to unpickle ({detail}); "
            "only plain state dicts of tensors are loaded (torch.load with weights_only=True)"
        ) from exc
    except (EOFError, ValueError, OSError, KeyError) as exc:
        raise WeightsError(f"cannot read {path.name}: not a torch checkpoint ({type(exc).__name__}: {exc})") from exc


def _tensors_of(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping) and isinstance(loaded.get("model"), Mapping):
        loaded = loaded["model"]
    if not isinstance(loaded, Mapping):
        raise WeightsError(f"{path.name} does not hold a state dict (found {type(loaded).__name__})")
    return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def read_llm_config(llm_dir: Path) -> GPTNeoXConfig:
    """The GPT-NeoX config, checked: the rotary fraction and parallel residual must be read as written
    (transformers 5 renamed these fields and silently falls back to defaults for unmapped names)."""
    path = llm_dir / "config.json"
    if not path.is_file():
        raise WeightsError(f"missing {path} (the HF directory of rinna/bilingual-gpt-neox-4b)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        config = GPTNeoXConfig.from_pretrained(llm_dir)
    except (ValueError, TypeError, OSError) as exc:  # JSONDecodeError is a ValueError
        raise WeightsError(f"cannot read {path}: {exc}") from exc
    written_rotary = raw.get("rotary_pct", (raw.get("rope_parameters") or {}).get("partial_rotary_factor"))
    read_rotary = (config.rope_parameters or {}).get("partial_rotary_factor")
    if written_rotary is not None and float(read_rotary) != float(written_rotary):
        raise WeightsError(f"GPT-NeoX rotary fraction read as {read_rotary}, but config.json says {written_rotary}")
    written_parallel = raw.get("use_parallel_residual")
    if written_parallel is not None and bool(config.use_parallel_residual) != bool(written_parallel):
        raise WeightsError(
            f"GPT-NeoX use_parallel_residual read as {config.use_parallel_residual}, config.json says {written_parallel}"
        )
    return config


def read_llm_state(llm_dir: Path) -> dict[str, torch.Tensor]:
    """The GPT-NeoX tensors: ``model.safetensors`` (preferred), sharded safetensors, or ``pytorch_model.bin``."""
    if (llm_dir / "model.safetensors").is_file():
        return _read_safetensors(llm_dir / "model.safetensors")
    for index_name, reader in (("model.safetensors.index.json", _read_safetensors),
                               ("pytorch_model.bin.index.json", read_state_dict)):
        index = llm_dir / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in reader(llm_dir / shard).items()}
    if (llm_dir / "pytorch_model.bin").is_file():
        return read_state_dict(llm_dir / "pytorch_model.bin")
    raise WeightsError(f"no GPT-NeoX weights in {llm_dir} (expected model.safetensors)")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"cannot read {path}: {exc}") from exc


def _rename(tensors: Mapping[str, torch.Tensor], rename: Callable[[str], str | None], source: str,
            ignored: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        name = rename(key)
        if name is None:
            ignored.setdefault(source, []).append(key)
        else:
            out[name] = tensor
    return out


def model_name(source: str, key: str, *, vit_depth: int) -> str | None:
    """The model's name for ``key`` of artefact ``source`` (``None``: not a tensor of the model).

    eva_vit_g.pth keys are timm's names under ``visual_encoder.`` (blocks past ``vit_depth`` dropped);
    blip2_pretrained_flant5xxl.pth gives ``query_tokens``, ``ln_vision`` and the Q-Former's query path;
    checkpoint.pth gives ``llama_proj``; GPT-NeoX keys go under ``llm.`` (``embed_out`` -> ``lm_head``).
    """
    if source == EVA_FILE:
        return f"visual_encoder.{key}" if vision_key(key, depth=vit_depth) else None
    if source == BLIP2_FILE:
        if key == "query_tokens" or key.startswith("ln_vision."):
            return key
        name = qformer_key(key)
        return None if name is None else f"qformer.{name}"
    if source == PROJECTION_FILE:
        return key if key.startswith("llama_proj.") else None
    # transformers 4.x checkpoints (rinna's) call the output head ``embed_out``; transformers 5 ``lm_head``.
    return "llm.lm_head." + key[len("embed_out."):] if key.startswith("embed_out.") else f"llm.{key}"


def read_sources(weights_dir: Path, arch: Arch, *, expected: Iterable[str],
                 progress: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """All tensors the model needs, under its parameter names, from the four artefacts."""
    expected = set(expected)
    ignored: dict[str, list[str]] = {}
    tensors: dict[str, torch.Tensor] = {}
    readers = ((EVA_FILE, read_state_dict), (BLIP2_FILE, read_state_dict), (PROJECTION_FILE, read_state_dict),
               (LLM_DIR, read_llm_state))
    for source, read in readers:
        if progress:
            progress(f"reading {source}")

        def rename(key: str, source: str = source) -> str | None:
            name = model_name(source, key, vit_depth=arch.vision.depth)
            return name if name in expected else None

        tensors.update(_rename(read(weights_dir / source), rename, source, ignored))
    for source, keys in ignored.items():
        log.info("ignored %d tensors of %s not used by the model (e.g. %s)", len(keys), source, ", ".join(keys[:3]))
    return tensors


def source_of(name: str) -> str:
    """Which artefact holds the tensor the model calls ``name``."""
    for prefix, source in (("visual_encoder.", EVA_FILE), ("llama_proj.", PROJECTION_FILE), ("llm.", LLM_DIR)):
        if name.startswith(prefix):
            return source
    return BLIP2_FILE


def check_tensors(tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size]) -> None:
    """Raise :class:`WeightsError` naming every missing or mis-shaped tensor."""
    check_shapes({name: tensor.shape for name, tensor in tensors.items()}, expected)


def check_shapes(shapes: Mapping[str, torch.Size], expected: Mapping[str, torch.Size]) -> None:
    """Like :func:`check_tensors`, from the tensors' shapes alone."""
    missing = [f"{name} ({source_of(name)})" for name in sorted(set(expected) - set(shapes))]
    wrong = [f"{name} ({source_of(name)}) is {tuple(shapes[name])}, expected {tuple(shape)}"
             for name, shape in expected.items() if name in shapes and shapes[name] != shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {', '.join(missing[:12])}{' ...' if len(missing) > 12 else ''}")
    if wrong:
        problems.append(f"{len(wrong)} with a wrong shape: {', '.join(wrong[:12])}")
    if problems:
        raise WeightsError("weights do not fit the architecture; " + "; ".join(problems))
