"""What the documentation promises is what the code does: every setting in .env.example and the README
table with its default, and a --help for every subcommand of both command lines."""

from __future__ import annotations

import re

import pytest

from bot.settings import Settings
from tests.support.processes import ROOT
from tests.support.processes import run_python as _run


def test_env_example_documents_every_setting_with_default() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    documented = {}
    for i, line in enumerate(lines):
        match = re.match(r"^([A-Z][A-Z0-9_]*)=", line)
        if match:
            documented[match.group(1)] = lines[i - 1]
    assert set(documented) == {name.upper() for name in Settings.model_fields}
    for name, comment in documented.items():
        assert comment.startswith("# ") and "Default:" in comment, f"{name} needs a comment with its default"
        secret = Settings.model_fields[name.lower()].annotation
        assert ("[secret]" in comment) == ("SecretStr" in str(secret)), f"{name}: mark secrets as [secret]"


def test_readme_configuration_table_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name.upper() for name in Settings.model_fields if f"| `{name.upper()}` |" not in readme]
    assert not missing, f"README configuration table lacks {missing}"


@pytest.mark.parametrize("package", ["bot", "model_worker"])
def test_help_describes_every_subcommand(package: str) -> None:
    result = _run("-m", package, "--help")
    assert result.returncode == 0, result.stderr
    module = __import__(f"{package}.__main__", fromlist=["x"])
    names = module.COMMANDS if package == "bot" else module.SUBCOMMANDS
    for name in names:
        assert name in result.stdout
        sub = _run("-m", package, name, "--help")
        assert sub.returncode == 0 and "usage:" in sub.stdout, sub.stderr
