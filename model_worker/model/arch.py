"""Architecture sizes of the vision side; the real model's by default, overridable by ``arch.json``.

The language model's sizes are not here: they come from ``gpt-neox/config.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

ARCH_FILE = "arch.json"


@dataclass(frozen=True)
class VisionArch:
    """EVA-CLIP ViT-g/14 cut to its first 39 blocks (model.md §1)."""

    width: int = 1408
    depth: int = 39
    heads: int = 16
    mlp_dim: int = 6144
    patch_size: int = 14
    image_size: int = 224

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass(frozen=True)
class QFormerArch:
    """BERT-base-shaped Q-Former, query path only (model.md §1)."""

    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    cross_attention_every: int = 2
    num_queries: int = 32


@dataclass(frozen=True)
class Arch:
    vision: VisionArch = field(default_factory=VisionArch)
    qformer: QFormerArch = field(default_factory=QFormerArch)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _override(section: type, base: object, values: object, where: str) -> object:
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a JSON object")
    allowed = {f.name for f in fields(section)}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; allowed: {sorted(allowed)}")
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{where}.{key} must be a positive integer, got {value!r}")
    return replace(base, **values)


def arch_from_dict(data: dict) -> Arch:
    """Apply an ``arch.json``-shaped dict (all keys optional) over the real model's sizes."""
    unknown = sorted(set(data) - {"vision", "qformer"})
    if unknown:
        raise ValueError(f"arch.json has unknown sections {unknown}; allowed: ['qformer', 'vision']")
    arch = Arch()
    vision = _override(VisionArch, arch.vision, data.get("vision", {}), "arch.json vision")
    qformer = _override(QFormerArch, arch.qformer, data.get("qformer", {}), "arch.json qformer")
    if vision.image_size % vision.patch_size:
        raise ValueError("arch.json vision.image_size must be a multiple of vision.patch_size")
    return Arch(vision=vision, qformer=qformer)


def load_arch(weights_dir: Path) -> Arch:
    """The architecture for a weights directory: defaults, overridden by its ``arch.json`` if present."""
    path = Path(weights_dir) / ARCH_FILE
    if not path.exists():
        return Arch()
    return arch_from_dict(json.loads(path.read_text(encoding="utf-8")))
