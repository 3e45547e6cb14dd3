"""The wire protocol and the bot's worker client stay free of torch (the bot process must stay light)."""

from __future__ import annotations

import subprocess
import sys

LIGHT_MODULES = ["model_worker.wire.protocol", "bot.worker_client", "bot.worker_client.base",
                 "bot.worker_client.http", "bot.worker_client.supervisor"]
HEAVY = ["torch", "transformers", "timm"]


def test_protocol_and_worker_client_import_without_torch():
    code = (
        "import importlib, sys\n"
        f"for name in {LIGHT_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
