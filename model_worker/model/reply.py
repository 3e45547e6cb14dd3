"""Turning generated ids into the reply text: stop at a new turn, and stream only text that is final.

The reply stops where the model starts a new turn (a new line beginning with ``ユーザー:`` or
``システム:``); that start and everything after it is cut. The final reply is the decoded text (special ids
dropped) before the cut, stripped. While generating, only a prefix that can no longer change is shown:
leading whitespace, trailing whitespace, a trailing partial turn marker and a trailing incomplete UTF-8
sequence (decoded as U+FFFD) are held back, so the streamed text only ever grows by appending.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_worker.model.prompt import TURN_MARKERS
from model_worker.model.tokenizer import Tokenizer

_REPLACEMENT = "\ufffd"
_LONGEST_MARKER = max(len(marker) for marker in TURN_MARKERS)


def find_turn_marker(text: str, start: int = 0) -> int | None:
    """Index where the model starts a new turn (searching from ``start``), or ``None``."""
    hits = [i for i in (text.find(marker, start) for marker in TURN_MARKERS) if i >= 0]
    return min(hits) if hits else None


def stable_text(text: str) -> str:
    """The part of a still-growing decoded reply that can no longer change."""
    text = text.lstrip()
    newline = text.rfind("\n")
    if newline >= 0 and any(marker.startswith(text[newline:]) for marker in TURN_MARKERS):
        text = text[:newline]
    return text.rstrip(_REPLACEMENT).rstrip()


@dataclass
class ReplyState:
    """Where a reply stands after its latest token."""

    text: str  # to show now (final and stripped when ``stopped``)
    stopped: bool  # the model started a new turn
    kept_ids: int  # how many generated ids belong to the reply (stop marker excluded)


def read_reply(tokenizer: Tokenizer, ids: list[int], *, final: bool) -> ReplyState:
    """The reply for the generated ``ids`` (EOS excluded); ``final`` when generation ends here."""
    decoded = tokenizer.decode(ids)
    cut = find_turn_marker(decoded)
    if cut is None:
        return ReplyState(decoded.strip() if final else stable_text(decoded), stopped=False, kept_ids=len(ids))
    return ReplyState(decoded[:cut].strip(), stopped=True, kept_ids=_ids_before(tokenizer, ids, cut))


def _ids_before(tokenizer: Tokenizer, ids: list[int], cut: int) -> int:
    """The fewest leading ids whose text reaches ``cut`` (the ids of the stop marker are not kept)."""
    for count in range(len(ids) + 1):
        if len(tokenizer.decode(ids[:count])) >= cut:
            return count
    return len(ids)


class ReplyReader:
    """:func:`read_reply` for one growing list of ids, decoding only what is new.

    sentencepiece decodes piece by piece, so the text of the ids up to a plain piece (not a byte of a
    multi-byte character, not a dropped special id) never changes: that much is kept, and each new plain
    piece adds its own text; only ids after the last plain piece are decoded again. A tokenizer that does
    not decode piece by piece gets :func:`read_reply` every time.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._settled_ids = 0  # ids[:_settled_ids] decode to _settled_text for good
        self._settled_text = ""

    def read(self, ids: list[int], *, final: bool) -> ReplyState:
        """The same as ``read_reply(tokenizer, ids, final=final)`` for ids that only ever grew."""
        tokenizer = self._tokenizer
        if not tokenizer.decodes_piecewise:
            return read_reply(tokenizer, ids, final=final)
        searched = max(0, len(self._settled_text) - _LONGEST_MARKER + 1)  # no marker starts before this
        self._settle(ids)
        tail = ids[self._settled_ids:]
        decoded = self._settled_text + tokenizer.decode(tail) if tail else self._settled_text
        cut = find_turn_marker(decoded, start=searched)
        if cut is not None:
            return ReplyState(decoded[:cut].strip(), stopped=True, kept_ids=_ids_before(tokenizer, ids, cut))
        return ReplyState(decoded.strip() if final else stable_text(decoded), stopped=False, kept_ids=len(ids))

    def _settle(self, ids: list[int]) -> None:
        """Take in the new ids up to the last plain piece."""
        end = len(ids)
        while end > self._settled_ids and not self._tokenizer.closes_text(ids[end - 1]):
            end -= 1
        if end > self._settled_ids:
            self._settled_text += self._tokenizer.text_of(ids[self._settled_ids:end])
            self._settled_ids = end
