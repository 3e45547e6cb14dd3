"""The bot process stays light: importing every bot module and the wire package never imports torch,
transformers or timm."""

from __future__ import annotations

from tests.support.processes import run_python as _run


def test_importing_the_bot_never_imports_the_model_stack() -> None:
    code = (
        "import pkgutil, importlib, sys, bot\n"
        "for m in pkgutil.walk_packages(bot.__path__, 'bot.'):\n"
        "    importlib.import_module(m.name)\n"
        "import model_worker.wire.protocol\n"
        "heavy = sorted(n for n in ('torch', 'transformers', 'timm') if n in sys.modules)\n"
        "print('HEAVY:', heavy)\n"
    )
    result = _run("-c", code)
    assert result.returncode == 0, result.stderr
    assert "HEAVY: []" in result.stdout
