"""Fit model output to a platform: neutralise mentions, then cut into messages no longer than the limit.

Cuts fall, in order of preference, at a paragraph break, a line break, a sentence end, then a space;
never inside a URL, an HTML entity, a grapheme (combining marks, joiners, variation selectors) or a
fenced code block. A code block that alone exceeds the limit is cut at a line inside it, closing the
fence at the end of one part and reopening it (with its language) at the start of the next.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

Markup = Literal["discord", "slack", "plain"]

_FENCE = re.compile(r"```[^\n`]*\n.*?(?:```|\Z)", re.DOTALL)
_PROTECTED = re.compile(r"(?:https?|ftp)://\S+|<[^<>\s]+>|&[A-Za-z#0-9]+;")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])")
_SPACE = re.compile(r"\s+")
_BREAKS = (re.compile(r"\n[ \t]*\n\s*"), re.compile(r"\n"), _SENTENCE_END, _SPACE)
_CLOSE = "\n```"
_JOINERS = {"\u200d", "\u200c"}

_DISCORD_MENTIONS = (
    (re.compile(r"@(everyone|here)"), "@\u200b\\1"),
    (re.compile(r"<@([!&]?)(\d+)>"), "<@\u200b\\1\\2>"),
    (re.compile(r"<#(\d+)>"), "<#\u200b\\1>"),
)


def neutralise_mentions(text: str, markup: Markup) -> str:
    """Make model output unable to ping anyone: Discord ``@everyone``/``@here``/``<@id>``/``<@&id>``;
    Slack's control sequences (``<!channel>``, ``<!here>``, ``<@U..>``...) by escaping ``& < >``."""
    if markup == "discord":
        for pattern, replacement in _DISCORD_MENTIONS:
            text = pattern.sub(replacement, text)
        return text
    if markup == "slack":
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text


def prepare_parts(text: str, *, limit: int, markup: Markup) -> tuple[str, ...]:
    """Neutralise mentions in ``text`` and split it into parts of at most ``limit`` characters."""
    return tuple(split_message(neutralise_mentions(text, markup), limit))


def split_message(text: str, limit: int) -> list[str]:
    """Split ``text`` into parts of at most ``limit`` characters (see the module docstring)."""
    if limit < 16:
        raise ValueError("limit must be at least 16 characters")
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        head, rest = _cut(rest, limit)
        if head.strip():
            parts.append(head)
    if rest.strip() or not parts:
        parts.append(rest)
    return parts


@dataclass(frozen=True)
class _Spans:
    fences: list[tuple[int, int]]
    protected: list[tuple[int, int]]

    @classmethod
    def of(cls, text: str) -> _Spans:
        fences = [m.span() for m in _FENCE.finditer(text)]
        protected = [m.span() for m in _PROTECTED.finditer(text) if not _inside(m.start(), fences)]
        return cls(fences, protected)

    def allows(self, pos: int) -> bool:
        return not _inside(pos, self.fences) and not _inside(pos, self.protected)


def _inside(pos: int, spans: list[tuple[int, int]]) -> bool:
    return any(start < pos < end for start, end in spans)


def _cut(text: str, limit: int) -> tuple[str, str]:
    spans = _Spans.of(text)
    best = _preferred_cut(text, limit, spans)
    if best is not None:
        return text[: best[0]], text[best[1]:]
    fence = next(((s, e) for s, e in spans.fences if s < limit < e), None)
    if fence is not None:
        if fence[0] > 0:
            return text[: fence[0]].rstrip(), text[fence[0]:]
        return _cut_inside_fence(text, limit)
    return _hard_cut(text, limit, spans)


def _preferred_cut(text: str, limit: int, spans: _Spans) -> tuple[int, int] | None:
    """The (end of head, start of rest) of the best break within the limit, or None."""
    window = text[: limit + 1]
    for pattern in _BREAKS:
        for match in reversed(list(pattern.finditer(window))):
            start, end = match.span()
            if start < limit // 3:
                break
            if start <= limit and spans.allows(start) and spans.allows(end):
                return start, end
    return None


def _cut_inside_fence(text: str, limit: int) -> tuple[str, str]:
    """The text starts with a code block longer than the limit: cut at a line, close and reopen."""
    opening = text[: text.index("\n") + 1]  # "```lang\n"
    budget = limit - len(_CLOSE)
    newline = text.rfind("\n", len(opening), budget)
    pos = newline if newline > len(opening) else _safe_boundary(text, budget)
    return text[:pos] + _CLOSE, opening + text[pos:].lstrip("\n")


def _hard_cut(text: str, limit: int, spans: _Spans) -> tuple[str, str]:
    protected = next(((s, e) for s, e in spans.protected if s < limit < e), None)
    if protected is not None and protected[0] > 0:
        return text[: protected[0]].rstrip(), text[protected[0]:]
    pos = _safe_boundary(text, limit)
    return text[:pos], text[pos:]


def _safe_boundary(text: str, pos: int) -> int:
    """Move ``pos`` back so that no grapheme (base + combining marks / joiners / selectors) is split."""
    while pos > 1 and _attaches_to_previous(text, pos):
        pos -= 1
    return pos


def _attaches_to_previous(text: str, pos: int) -> bool:
    char, before = text[pos], text[pos - 1]
    if unicodedata.combining(char) or char in _JOINERS or before in _JOINERS:
        return True
    return "\ufe00" <= char <= "\ufe0f" or "\U0001f3fb" <= char <= "\U0001f3ff"
