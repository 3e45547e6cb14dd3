"""Settings are read once, checked, and a bad value stops start-up with one sentence naming the variable."""

from __future__ import annotations

import pytest

from bot.settings import SettingsError, load_settings
from tests.support.processes import run_python as _run


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


def test_missing_platform_credentials_are_explained() -> None:
    result = _run("-m", "bot", "discord", env={"DISCORD_TOKEN": ""})
    assert result.returncode == 2 and "DISCORD_TOKEN" in result.stderr
