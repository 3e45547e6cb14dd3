"""Pure Slack payload builders and mrkdwn shaping: no I/O, no SDK calls.

Slack's mrkdwn only renders ``*bold*`` and ``_italic_`` when the markers sit at a word boundary, which
Japanese text (no spaces between words) never gives them. A zero-width space next to a marker supplies the
boundary without showing anything, so emphasis next to kana and kanji renders.
"""

from __future__ import annotations

import re
from typing import Any

ZERO_WIDTH_SPACE = "\u200b"
STOP_ACTION_ID = "minigpt4_stop"
SECTION_TEXT_LIMIT = 3000  # Block Kit section text; longer parts go out as plain text without a button

# Code spans and blocks are left exactly as the model wrote them.
_CODE = re.compile(r"(```.*?```|`[^`\n]+`)", re.DOTALL)
# Markdown emphasis as models write it: **bold**, __bold__, *italic*, _italic_ (no nesting, one line).
_EMPHASIS = re.compile(
    r"\*\*(?P<bold>[^*\n]+?)\*\*"
    r"|__(?P<bold2>[^_\n]+?)__"
    r"|(?<!\*)\*(?P<italic>[^*\s](?:[^*\n]*?[^*\s])?)\*(?!\*)"
    r"|(?<![A-Za-z0-9_])_(?P<italic2>[^_\s](?:[^_\n]*?[^_\s])?)_(?![A-Za-z0-9_])"
)


def to_mrkdwn(text: str) -> str:
    """Markdown emphasis in model text -> Slack mrkdwn that also renders next to CJK characters."""
    pieces = _CODE.split(text)
    # split() with one group alternates prose (even indexes) and code (odd indexes)
    return "".join(piece if index % 2 else _convert_emphasis(piece) for index, piece in enumerate(pieces))


def _convert_emphasis(prose: str) -> str:
    def replace(match: re.Match[str]) -> str:
        bold = match.group("bold") or match.group("bold2")
        inner, marker = (bold, "*") if bold else (match.group("italic") or match.group("italic2"), "_")
        before = _boundary(prose, match.start() - 1)
        after = _boundary(prose, match.end())
        return f"{before}{marker}{inner}{marker}{after}"

    return _EMPHASIS.sub(replace, prose)


def _boundary(text: str, index: int) -> str:
    """A zero-width space where the neighbouring character would glue itself to the marker."""
    if index < 0 or index >= len(text) or text[index].isspace():
        return ""
    return ZERO_WIDTH_SPACE


def escape_control_characters(text: str) -> str:
    """Escape the three characters Slack reads as markup (links, mentions, entities)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def stop_value(request_id: str, asker_id: str) -> str:
    """The Stop button's value: which request, and who asked (to word a refusal correctly)."""
    return f"{request_id}:{asker_id}"


def parse_stop_value(value: str) -> tuple[str, str]:
    """(request id, asker id) from :func:`stop_value`'s output."""
    request_id, _, asker_id = value.partition(":")
    return request_id, asker_id


def reply_blocks(text: str, *, stop: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """One section with ``text``; with ``stop=(label, value)`` a Stop button under it.

    Blocks are always sent (an empty list when the text is too long for a section), so that an edit
    also removes an earlier Stop button.
    """
    if len(text) > SECTION_TEXT_LIMIT:
        return []
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    if stop is not None:
        label, value = stop
        blocks.append({"type": "actions", "elements": [{
            "type": "button", "action_id": STOP_ACTION_ID, "value": value, "style": "danger",
            "text": {"type": "plain_text", "text": label},
        }]})
    return blocks


def message_payload(*, channel: str, text: str, thread_ts: str | None,
                    blocks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``chat.postMessage`` arguments for one reply message in a thread (or top level in a DM)."""
    payload: dict[str, Any] = {"channel": channel, "text": text, "unfurl_links": False, "unfurl_media": False}
    if thread_ts is not None:
        payload["thread_ts"] = thread_ts
    if blocks is not None:
        payload["blocks"] = blocks
    return payload


def update_payload(*, channel: str, ts: str, text: str,
                   blocks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``chat.update`` arguments that replace one message's text (and its blocks)."""
    payload: dict[str, Any] = {"channel": channel, "ts": ts, "text": text}
    if blocks is not None:
        payload["blocks"] = blocks
    return payload


def ephemeral_payload(*, channel: str, user: str, text: str, thread_ts: str | None) -> dict[str, Any]:
    """``chat.postEphemeral`` arguments: a notice only ``user`` sees."""
    payload: dict[str, Any] = {"channel": channel, "user": user, "text": text}
    if thread_ts is not None:
        payload["thread_ts"] = thread_ts
    return payload


def reaction_payload(*, channel: str, ts: str, name: str) -> dict[str, Any]:
    """``reactions.add`` / ``reactions.remove`` arguments."""
    return {"channel": channel, "timestamp": ts, "name": name}
