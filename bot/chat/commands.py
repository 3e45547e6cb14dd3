"""Text commands the service recognises in English and Japanese (``reset`` / ``リセット``, ``help`` / ``ヘルプ``)."""

from __future__ import annotations

import unicodedata
from typing import Literal

Command = Literal["reset", "help"]

_WORDS: dict[str, Command] = {
    "reset": "reset",
    "リセット": "reset", "りせっと": "reset", "新しい会話": "reset", "会話をリセット": "reset",
    "help": "help",
    "ヘルプ": "help", "へるぷ": "help", "使い方": "help", "つかいかた": "help",
}
_STRIP = " \t\r\n　。.!！?？"


def parse_command(text: str) -> Command | None:
    """The command that the whole message is, if any: one word, optionally after ``/`` or ``!``,
    case- and width-insensitive (``RESET``, ``/reset``, ``ｒｅｓｅｔ``, ``リセット。``)."""
    word = unicodedata.normalize("NFKC", text).strip().lower()
    if word in _WORDS:
        return _WORDS[word]
    word = word.lstrip("/!").strip(_STRIP)
    return _WORDS.get(word)
