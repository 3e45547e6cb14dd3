"""The converted bundle: one safetensors file with every tensor under the model's names.

A bundle directory is itself a weights directory: ``minigpt4.safetensors`` (tensors at their source
precision; metadata holds a fingerprint of the sources it came from), ``arch.json`` and ``gpt-neox/`` with
the config and tokenizer files. The worker writes one as a cache on first load and starts from it later,
reading each tensor straight to its place (no unpickling); a changed source (size or modification time)
invalidates it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model_worker.model.arch import ARCH_FILE, Arch
from model_worker.model.weights import BLIP2_FILE, EVA_FILE, LLM_DIR, PROJECTION_FILE, WeightsError

log = logging.getLogger(__name__)

BUNDLE_FILE = "minigpt4.safetensors"
BUNDLE_FORMAT = "minigpt4-bundle/1"
LOCAL_CACHE_DIR = ".minigpt4-bundle"
LLM_SIDE_FILES = ("config.json", "spiece.model", "tokenizer_config.json", "special_tokens_map.json",
                  "generation_config.json")


def is_bundle_dir(path: Path) -> bool:
    """True for a directory that holds a bundle and none of the source artefacts."""
    return (path / BUNDLE_FILE).is_file() and not (path / EVA_FILE).exists()


def source_fingerprint(weights_dir: Path) -> str:
    """A JSON string of every source file's size and modification time."""
    files = [EVA_FILE, BLIP2_FILE, PROJECTION_FILE, ARCH_FILE]
    llm_dir = weights_dir / LLM_DIR
    if llm_dir.is_dir():
        files += [f"{LLM_DIR}/{p.name}" for p in sorted(llm_dir.iterdir()) if p.is_file()]
    stats = {}
    for name in files:
        path = weights_dir / name
        if path.is_file():
            stat = path.stat()
            stats[name] = [stat.st_size, stat.st_mtime_ns]
    return json.dumps(stats, sort_keys=True)


def default_cache_dir(weights_dir: Path) -> Path:
    """Next to the sources when that directory is writable, else under the user's cache directory."""
    weights_dir = weights_dir.resolve()
    if os.access(weights_dir, os.W_OK):
        return weights_dir / LOCAL_CACHE_DIR
    digest = hashlib.sha256(str(weights_dir).encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "minigpt4-worker" / "bundles" / digest


def bundle_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def is_fresh(bundle_dir: Path, weights_dir: Path) -> bool:
    """Whether ``bundle_dir`` holds a bundle made from the sources as they are now."""
    path = bundle_dir / BUNDLE_FILE
    if not path.is_file():
        return False
    try:
        metadata = bundle_metadata(path)
    except (SafetensorError, OSError):  # a truncated or foreign file is just stale
        return False
    return metadata.get("format") == BUNDLE_FORMAT and metadata.get("sources") == source_fingerprint(weights_dir)


def write_bundle(out_dir: Path, tensors: Mapping[str, torch.Tensor], *, weights_dir: Path, arch: Arch) -> Path:
    """Write a self-contained bundle directory; the tensor file is written last and atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / LLM_DIR).mkdir(exist_ok=True)
    for name in LLM_SIDE_FILES:
        source = weights_dir / LLM_DIR / name
        if source.is_file():
            shutil.copyfile(source, out_dir / LLM_DIR / name)
    (out_dir / ARCH_FILE).write_text(arch.to_json() + "\n", encoding="utf-8")
    metadata = {"format": BUNDLE_FORMAT, "sources": source_fingerprint(weights_dir)}
    fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=".tmp-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_name, metadata=metadata)
        os.replace(tmp_name, out_dir / BUNDLE_FILE)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return out_dir / BUNDLE_FILE


class BundleTensors:
    """The bundle's tensors, each read from the file when taken, not through a memory map (whose touched
    pages stay resident beside the copy a cast or a quantization makes)."""

    def __init__(self, bundle_dir: Path) -> None:
        self.path = bundle_dir / BUNDLE_FILE
        try:
            self._handle = safe_open(str(self.path), framework="pt", device="cpu", backend="pread")
            self._offsets = _data_offsets(self.path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"cannot read the bundle {self.path}: {exc}") from exc

    def shapes(self) -> dict[str, torch.Size]:
        """Every tensor's shape, from the header (nothing is read)."""
        return {key: torch.Size(self._handle.get_slice(key).get_shape()) for key in self._handle.keys()}

    def take(self, name: str) -> torch.Tensor:
        """The tensor ``name`` at its stored precision, in memory of its own."""
        try:
            return self._handle.get_tensor(name)
        except (SafetensorError, OSError) as exc:
            raise WeightsError(f"cannot read {name} from the bundle {self.path}: {exc}") from exc

    def take_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` (first dimension) of ``name``, reading only their bytes: safetensors' own
        slices read the whole tensor first, which would put a whole output head beside its copy."""
        meta = self._handle.get_slice(name)
        shape, dtype = meta.get_shape(), _TORCH_DTYPES[meta.get_dtype()]
        out = torch.empty((stop - start, *shape[1:]), dtype=dtype)
        row_bytes = out[:1].nbytes if stop > start else 0
        _read_exactly(self.path, out.view(torch.uint8).numpy(), self._offsets[name] + start * row_bytes)
        return out

    def close(self) -> None:
        self._handle = None


# safetensors' dtype names (its format documentation) for the dtypes a bundle holds.
_TORCH_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
                 "I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def _data_offsets(path: Path) -> dict[str, int]:
    """Where each tensor's bytes start in a safetensors file: after the 8-byte header length and the JSON
    header, at the tensor's ``data_offsets`` (the file format, as documented by safetensors)."""
    with path.open("rb") as handle:
        header_length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_length))
    return {name: 8 + header_length + entry["data_offsets"][0]
            for name, entry in header.items() if name != "__metadata__"}


def _read_exactly(path: Path, buffer, offset: int) -> None:
    view = memoryview(buffer).cast("B")
    with path.open("rb", buffering=0) as handle:
        done = 0
        while done < len(view):
            count = os.preadv(handle.fileno(), [view[done:]], offset + done)
            if count == 0:
                raise WeightsError(f"{path} ends early (truncated bundle)")
            done += count
