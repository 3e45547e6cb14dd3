"""The app manifest asks for exactly the scopes and events the adapter uses."""

from __future__ import annotations

from pathlib import Path

import yaml

import bot.adapters.slack as slack_adapter
from bot.adapters.slack.listeners import SLASH_COMMAND

MANIFEST = Path(slack_adapter.__file__).with_name("manifest.yaml")


def test_manifest_scopes_events_and_settings() -> None:
    manifest = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    assert sorted(manifest["oauth_config"]["scopes"]["bot"]) == sorted([
        "app_mentions:read", "channels:history", "groups:history", "im:history", "chat:write",
        "reactions:write", "files:read", "users:read", "commands",
    ])
    assert sorted(manifest["settings"]["event_subscriptions"]["bot_events"]) == [
        "app_mention", "message.channels", "message.groups", "message.im"]
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert [c["command"] for c in manifest["features"]["slash_commands"]] == [SLASH_COMMAND]
    assert manifest["features"]["app_home"]["messages_tab_enabled"] is True
