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
LLM_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model.bin.index.json")


class WeightsError(RuntimeError):
    """The weights cannot be used; the message says which file or tensor and why."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A pickled state dict (flat or under ``"model"``), refusing pickles that need code."""
    if not path.is_file():
        raise WeightsError(f"missing weights file {path} (python -m model_worker download fetches it)")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if "Unsupported" in line), "")
        raise WeightsError(
            f"refusing {path.name}: it needs code to unpickle ({detail or 'not a plain tensor state dict'}); "
            "only plain state dicts of tensors are loaded (torch.load with weights_only=True)"
        ) from exc
    except RuntimeError as exc:
        if "mmap" not in str(exc):  # legacy (non-zip) files cannot be memory-mapped
            raise WeightsError(f"cannot read {path.name}: {exc}") from exc
        return read_state_dict_unmapped(path)
    return _tensors_of(loaded, path)


def read_state_dict_unmapped(path: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"refusing {path.name}: it needs code to unpickle ({exc})") from exc
    return _tensors_of(loaded, path)


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
    raw = json.loads(path.read_text(encoding="utf-8"))
    config = GPTNeoXConfig.from_pretrained(llm_dir)
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
        return load_file(llm_dir / "model.safetensors")
    for index_name, reader in (("model.safetensors.index.json", load_file), ("pytorch_model.bin.index.json", read_state_dict)):
        index = llm_dir / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in reader(llm_dir / shard).items()}
    if (llm_dir / "pytorch_model.bin").is_file():
        return read_state_dict(llm_dir / "pytorch_model.bin")
    raise WeightsError(f"no GPT-NeoX weights in {llm_dir} (expected model.safetensors)")


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


def _blip2_name(key: str) -> str | None:
    if key == "query_tokens" or key.startswith("ln_vision."):
        return key
    name = qformer_key(key)
    return None if name is None else f"qformer.{name}"


def read_sources(weights_dir: Path, arch: Arch, *, expected: Iterable[str],
                 progress: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """All tensors the model needs, under its parameter names, from the four artefacts."""
    expected = set(expected)
    ignored: dict[str, list[str]] = {}
    tensors: dict[str, torch.Tensor] = {}
    steps = (
        (EVA_FILE, lambda: read_state_dict(weights_dir / EVA_FILE),
         lambda k: _known(f"visual_encoder.{k}", expected) if vision_key(k, depth=arch.vision.depth) else None),
        (BLIP2_FILE, lambda: read_state_dict(weights_dir / BLIP2_FILE), lambda k: _known(_blip2_name(k), expected)),
        (PROJECTION_FILE, lambda: read_state_dict(weights_dir / PROJECTION_FILE),
         lambda k: k if k.startswith("llama_proj.") else None),
        (LLM_DIR, lambda: read_llm_state(weights_dir / LLM_DIR), lambda k: _known(_llm_name(k), expected)),
    )
    for source, read, rename in steps:
        if progress:
            progress(f"reading {source}")
        tensors.update(_rename(read(), rename, source, ignored))
    for source, keys in ignored.items():
        log.info("ignored %d tensors of %s not used by the model (e.g. %s)", len(keys), source, ", ".join(keys[:3]))
    return tensors


def _llm_name(key: str) -> str:
    # transformers 4.x checkpoints (rinna's) call the output head ``embed_out``; transformers 5 ``lm_head``.
    return "llm.lm_head." + key[len("embed_out."):] if key.startswith("embed_out.") else f"llm.{key}"


def _known(name: str | None, expected: set[str]) -> str | None:
    return name if name in expected else None


def source_of(name: str) -> str:
    """Which artefact holds the tensor the model calls ``name``."""
    for prefix, source in (("visual_encoder.", EVA_FILE), ("llama_proj.", PROJECTION_FILE), ("llm.", LLM_DIR)):
        if name.startswith(prefix):
            return source
    return BLIP2_FILE


def check_tensors(tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size]) -> None:
    """Raise :class:`WeightsError` naming every missing or mis-shaped tensor."""
    missing = [f"{name} ({source_of(name)})" for name in sorted(set(expected) - set(tensors))]
    wrong = [f"{name} ({source_of(name)}) is {tuple(tensors[name].shape)}, expected {tuple(shape)}"
             for name, shape in expected.items() if name in tensors and tensors[name].shape != shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {', '.join(missing[:12])}{' ...' if len(missing) > 12 else ''}")
    if wrong:
        problems.append(f"{len(wrong)} with a wrong shape: {', '.join(wrong[:12])}")
    if problems:
        raise WeightsError("weights do not fit the architecture; " + "; ".join(problems))
