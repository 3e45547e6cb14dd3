"""Find the model weights for the local worker, fetching or creating them on first run.

The bot never loads weights itself (no torch here); it only makes sure the directory it hands to its
worker child exists, by running the worker's own ``download`` or ``make-tiny`` commands.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

#: What ``python -m model_worker download`` lays out in a weights directory.
REQUIRED_FILES = ("eva_vit_g.pth", "blip2_pretrained_flant5xxl.pth", "checkpoint.pth", "gpt-neox/config.json")

DRY_RUN_WARNING = (
    "DRY RUN: the worker uses tiny RANDOM weights. The whole pipeline runs, but answers are meaningless text."
)


class WeightsUnavailable(Exception):
    """The weights are missing and could not be fetched; the text says what to do."""


def missing_files(weights_dir: Path) -> list[str]:
    return [name for name in REQUIRED_FILES if not (weights_dir / name).exists()]


def ensure_weights(model_weights: str, data_dir: Path, *, python: str = sys.executable) -> Path:
    """Return a weights directory ready for the worker: ``tiny`` makes dry-run weights under ``data_dir``;
    a real directory with files missing is downloaded (with progress) or explained."""
    if model_weights.strip().lower() == "tiny":
        return _ensure_tiny(data_dir / "tiny-weights", python)
    weights_dir = Path(model_weights).expanduser()
    missing = missing_files(weights_dir)
    if not missing:
        return weights_dir
    log.info("model weights missing in %s (%s): downloading them", weights_dir, ", ".join(missing))
    result = subprocess.run([python, "-m", "model_worker", "download", "--dest", str(weights_dir)], check=False)
    if result.returncode == 0 and not missing_files(weights_dir):
        return weights_dir
    raise WeightsUnavailable(_how_to_get_weights(weights_dir, missing_files(weights_dir)))


def _ensure_tiny(out: Path, python: str) -> Path:
    if not missing_files(out):
        log.warning(DRY_RUN_WARNING)
        return out
    log.info("creating tiny random weights in %s", out)
    subprocess.run([python, "-m", "model_worker", "make-tiny", "--out", str(out)], check=True)
    log.warning(DRY_RUN_WARNING)
    return out


def _how_to_get_weights(weights_dir: Path, missing: list[str]) -> str:
    return (
        f"The model weights are not in {weights_dir} (missing: {', '.join(missing)}) and could not be "
        "downloaded here.\n"
        "  - On a machine with internet access run:\n"
        f"      .venv/bin/python -m model_worker download --dest {weights_dir}\n"
        "    (about 12 GB: the two rinna repositories on the Hugging Face hub and the two LAVIS files;\n"
        "    see README, section 'Model weights'), or set MODEL_WEIGHTS to a directory that has them.\n"
        "  - To try the whole bot without them, do a dry run on tiny random weights (answers are\n"
        "    meaningless text):  MODEL_WEIGHTS=tiny ./scripts/run.sh"
    )
