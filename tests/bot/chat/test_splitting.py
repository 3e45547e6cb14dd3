"""Splitting long replies and neutralising mentions in model output."""

from __future__ import annotations

import re

import pytest

from bot.chat.splitting import neutralise_mentions, prepare_parts, split_message


def _fits(parts: list[str], limit: int) -> None:
    assert parts and all(0 < len(part) <= limit for part in parts)


def test_short_text_is_one_part() -> None:
    assert split_message("hello", 2000) == ["hello"]
    assert split_message("", 2000) == [""]


def test_cuts_at_paragraph_before_sentence() -> None:
    text = ("First sentence. " * 10).strip() + "\n\n" + ("Second paragraph. " * 10).strip()
    parts = split_message(text, 200)
    _fits(parts, 200)
    assert parts[0].endswith("First sentence.") and parts[1].startswith("Second paragraph.")


def test_cuts_at_sentence_end_in_english_and_japanese() -> None:
    english = " ".join(f"Sentence number {i} is here." for i in range(30))
    for part in split_message(english, 100):
        assert part.endswith(".")
    japanese = "".join(f"これは{i}番目の文です。" for i in range(40))
    parts = split_message(japanese, 50)
    _fits(parts, 50)
    assert all(part.endswith("。") for part in parts)
    assert "".join(parts) == japanese


def test_never_cuts_inside_a_url() -> None:
    url = "https://example.com/" + "a" * 60 + "/path?query=1"
    text = "word " * 15 + url + " and more words after it"
    parts = split_message(text, 100)
    _fits(parts, 100)
    assert any(url in part for part in parts)


def test_never_cuts_inside_a_code_block_that_fits() -> None:
    code = "```python\n" + "\n".join(f"print({i})" for i in range(8)) + "\n```"
    text = "Intro text. " * 8 + "\n" + code + "\nAfter."
    parts = split_message(text, 120)
    _fits(parts, 120)
    assert any(code in part for part in parts)
    for part in parts:
        assert part.count("```") % 2 == 0


def test_a_code_block_longer_than_the_limit_is_closed_and_reopened() -> None:
    code = "```python\n" + "\n".join(f"value_{i} = {i} * 2" for i in range(40)) + "\n```"
    parts = split_message(code, 150)
    _fits(parts, 150)
    for part in parts:
        assert part.startswith("```python\n") and part.endswith("```")
    lines = [line for part in parts for line in part.splitlines() if not line.startswith("```")]
    assert lines == [f"value_{i} = {i} * 2" for i in range(40)]


def test_never_splits_a_grapheme() -> None:
    family = "👨\u200d👩\u200d👧"
    accented = "e\u0301"  # e + combining acute
    text = (family + accented) * 30
    for part in split_message(text, 17):
        assert not part.startswith(("\u200d", "\u0301")) and not part.endswith("\u200d")
    assert "".join(split_message(text, 17)) == text


def test_rejects_a_silly_limit() -> None:
    with pytest.raises(ValueError):
        split_message("x" * 50, 3)


def test_discord_mentions_are_neutralised() -> None:
    text = "Hi @everyone and @here, ping <@123>, <@!456>, role <@&789>, channel <#42>."
    safe = neutralise_mentions(text, "discord")
    assert "@everyone" not in safe and "@here" not in safe
    assert not re.search(r"<@!?&?\d+>", safe) and not re.search(r"<#\d+>", safe)
    assert safe.replace("\u200b", "") == text


def test_slack_mentions_are_neutralised() -> None:
    text = "Alert <!channel> <!here> <!everyone> <@U12345> <!subteam^S1> & done"
    safe = neutralise_mentions(text, "slack")
    assert "<" not in safe and ">" not in safe
    assert "&lt;!channel&gt;" in safe and "&amp; done" in safe


def test_plain_markup_is_untouched() -> None:
    assert neutralise_mentions("@everyone <@1>", "plain") == "@everyone <@1>"


def test_prepare_parts_neutralises_then_splits_without_breaking_entities() -> None:
    text = ("<!here> " * 40).strip()
    parts = prepare_parts(text, limit=60, markup="slack")
    _fits(list(parts), 60)
    joined = " ".join(parts)
    assert "<" not in joined and joined.count("&lt;!here&gt;") == 40
