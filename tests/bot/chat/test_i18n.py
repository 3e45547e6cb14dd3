"""The catalogue: every key in English and Japanese with the same placeholders; locale -> language."""

from __future__ import annotations

import pytest

from bot.chat.i18n import CATALOGUE, LANGUAGES, language_for_locale, placeholders, t


def test_every_key_exists_in_both_languages() -> None:
    assert set(CATALOGUE["en"]) == set(CATALOGUE["ja"])
    assert set(CATALOGUE) == set(LANGUAGES)


@pytest.mark.parametrize("key", sorted(CATALOGUE["en"]))
def test_placeholders_match_and_text_is_translated(key: str) -> None:
    english, japanese = CATALOGUE["en"][key], CATALOGUE["ja"][key]
    assert placeholders(english) == placeholders(japanese)
    assert english.strip() and japanese.strip()


def test_adapter_labels_are_in_the_catalogue() -> None:
    for key in ("stop_button", "cmd_reset_description", "cmd_help_description", "slack_file_access_hint",
                "thread_refused"):
        assert t(key, "en") != t(key, "ja")


def test_queue_position_reads_naturally_in_both_languages() -> None:
    assert t("queued", "en", position=3) == "Queued: #3"
    assert t("queued", "ja", position=3) == "順番待ち: 3番目"


def test_unknown_language_falls_back_to_english_and_unknown_key_raises() -> None:
    assert t("stop_button", "fr") == "Stop"
    with pytest.raises(KeyError):
        t("no_such_key", "en")


@pytest.mark.parametrize(("locale", "default", "expected"), [
    ("ja", "en", "ja"), ("ja-JP", "en", "ja"), ("ja_JP", "en", "ja"), ("JA", "en", "ja"),
    ("en-US", "ja", "en"), ("en-GB", "ja", "en"), ("fr", "ja", "en"),
    (None, "ja", "ja"), ("", "en", "en"), (None, "en", "en"),
])
def test_language_follows_locale_with_default(locale: str | None, default: str, expected: str) -> None:
    assert language_for_locale(locale, default) == expected
