"""mrkdwn shaping: emphasis renders next to Japanese text, code and identifiers are left alone."""

from __future__ import annotations

from bot.adapters.slack.views import (
    SECTION_TEXT_LIMIT,
    escape_control_characters,
    parse_stop_value,
    reply_blocks,
    stop_value,
    to_mrkdwn,
)
from bot.adapters.slack.views import ZERO_WIDTH_SPACE as Z


def test_bold_and_italic_next_to_japanese_get_zero_width_boundaries() -> None:
    assert to_mrkdwn("これは**太字**です") == f"これは{Z}*太字*{Z}です"
    assert to_mrkdwn("これは*斜体*です") == f"これは{Z}_斜体_{Z}です"
    assert to_mrkdwn("これは_斜体_です") == f"これは{Z}_斜体_{Z}です"
    assert to_mrkdwn("「__重要__」") == f"「{Z}*重要*{Z}」"


def test_emphasis_between_spaces_needs_no_padding() -> None:
    assert to_mrkdwn("a **bold** and *italic* word") == "a *bold* and _italic_ word"
    assert to_mrkdwn("**start** and end") == "*start* and end"


def test_code_spans_blocks_and_identifiers_are_untouched() -> None:
    assert to_mrkdwn("use `**kwargs` here") == "use `**kwargs` here"
    block = "```\nx = a * b * c\n**not bold**\n```"
    assert to_mrkdwn(block) == block
    assert to_mrkdwn("snake_case_name and 2 * 3 * 4") == "snake_case_name and 2 * 3 * 4"


def test_escaping_keeps_slack_from_reading_mentions() -> None:
    assert escape_control_characters("<!channel> & <@U1>") == "&lt;!channel&gt; &amp; &lt;@U1&gt;"


def test_blocks_carry_a_stop_button_only_when_asked_and_only_when_the_text_fits() -> None:
    with_stop = reply_blocks("hi", stop=("Stop", "req-1"))
    assert with_stop[1]["elements"][0]["value"] == "req-1"
    assert reply_blocks("hi") == [{"type": "section", "text": {"type": "mrkdwn", "text": "hi"}}]
    assert reply_blocks("x" * (SECTION_TEXT_LIMIT + 1), stop=("Stop", "r")) == []
    assert parse_stop_value(stop_value("4f2a", "U0ALICE")) == ("4f2a", "U0ALICE")
