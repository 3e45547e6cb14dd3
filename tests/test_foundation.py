"""The foundation: settings, documentation in step with code, light bot imports, the command lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bot.logging_setup import PLATFORM_TOKEN_SHAPES
from bot.settings import Settings, SettingsError, load_settings
from model_worker.wire.logs import SecretMasker

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=kwargs.pop("cwd", ROOT), env=full_env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


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


def test_invalid_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_IMAGE_SIDE", "huge")
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None)
    assert "MAX_IMAGE_SIDE" in caught.value.message


def test_invalid_secret_is_named_but_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUE_URL", "http://user:hunter2@example")
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None)
    assert "QUEUE_URL" in caught.value.message and "hunter2" not in caught.value.message


def test_lists_and_mode_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_CHANNELS", " C1, C2 ,")
    assert load_settings(_env_file=None).allowed_channels == ("C1", "C2")
    monkeypatch.setenv("SLACK_MODE", "http")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test-token")
    with pytest.raises(SettingsError, match="SLACK_SIGNING_SECRET"):
        load_settings(_env_file=None)


def test_bad_setting_stops_start_up_with_one_clear_message() -> None:
    result = _run("-m", "bot", "check", env={"WORKER_URL": "ftp://nowhere"})
    assert result.returncode == 2
    assert "WORKER_URL" in result.stderr and "Traceback" not in result.stderr


def test_log_lines_never_show_secrets() -> None:
    masker = SecretMasker(["s3cret-value"], PLATFORM_TOKEN_SHAPES)
    text = masker.mask("token s3cret-value xoxb-1234567890-abcdef and redis://:pw123@host:6379/0 "
                       "Authorization: Bearer abcdefgh12345678 MTIzNDU2Nzg5MDEyMzQ1Njc4OTAx.GaBcDe.abcdefghijklmnopqrstuvwxyz0")
    for secret in ("s3cret-value", "xoxb-1234567890", "pw123", "abcdefgh12345678", "MTIzNDU2Nzg5"):
        assert secret not in text, text


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


def test_missing_platform_credentials_are_explained() -> None:
    result = _run("-m", "bot", "discord", env={"DISCORD_TOKEN": ""})
    assert result.returncode == 2 and "DISCORD_TOKEN" in result.stderr


def test_readme_configuration_table_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name.upper() for name in Settings.model_fields if f"| `{name.upper()}` |" not in readme]
    assert not missing, f"README configuration table lacks {missing}"
