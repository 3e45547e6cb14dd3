"""Text commands in English and Japanese."""

from __future__ import annotations

import pytest

from bot.chat.commands import parse_command


@pytest.mark.parametrize(("text", "expected"), [
    ("reset", "reset"), ("RESET", "reset"), ("/reset", "reset"), ("  reset ", "reset"), ("ｒｅｓｅｔ", "reset"),
    ("リセット", "reset"), ("リセット。", "reset"), ("新しい会話", "reset"),
    ("help", "help"), ("!help", "help"), ("ヘルプ", "help"), ("使い方", "help"), ("ヘルプ？", "help"),
    ("reset the conversation please", None), ("what is this?", None), ("", None), ("?", None),
])
def test_parse_command(text: str, expected: str | None) -> None:
    assert parse_command(text) == expected
