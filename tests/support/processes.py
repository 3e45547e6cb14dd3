"""Running the project's own command lines as a user would: ``python -m bot ...``, ``python -m model_worker ...``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_python(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
               cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``python ARGS`` in the repository root (or ``cwd``), with ``env`` over this environment."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
