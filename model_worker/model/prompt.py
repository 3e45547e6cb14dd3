"""Prompt building, tokenization and the context budget (model.md §3, the card's I/O format).

A user turn is ``ユーザー: `` + one ``<Img><ImageHere></Img> `` per image + its text; an assistant turn is
``システム: `` + its text; lines are joined with a newline and the prompt ends with a newline and
``システム: ``. The prompt is split on ``<ImageHere>`` and every text segment is tokenized on its own with
no special token; each ``<ImageHere>`` becomes the image's ``num_queries`` embeddings.

Sanitising: text from a request can never create a turn or an image slot. In every turn's text, line
breaks (any Unicode line boundary) become spaces and every literal ``<ImageHere>`` is removed (repeatedly,
so that removal cannot assemble a new one). Nothing else is touched: spaces, tabs and case are kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from model_worker.model.tokenizer import Tokenizer

USER_SPEAKER = "ユーザー"
ASSISTANT_SPEAKER = "システム"
IMAGE_SLOT = "<ImageHere>"
IMAGE_MARKUP = f"<Img>{IMAGE_SLOT}</Img> "
#: A reply stops where the model starts a new turn: a new line beginning with one of these.
TURN_MARKERS = (f"\n{USER_SPEAKER}:", f"\n{ASSISTANT_SPEAKER}:")

_LINE_BREAKS = re.compile(r"\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
_SPEAKERS = {"user": USER_SPEAKER, "assistant": ASSISTANT_SPEAKER}


class TurnLike(Protocol):
    role: str
    text: str
    images: Sequence[object]


class ContextTooLongError(ValueError):
    """The newest user turn alone does not fit the context with the requested new tokens."""

    def __init__(self, needed: int, available: int) -> None:
        super().__init__(
            f"the newest turn needs {needed} positions but only {available} are available "
            "(context length minus max_new_tokens)"
        )
        self.needed = needed
        self.available = available


def sanitize_text(text: str) -> str:
    """Make utterance text inert: line breaks -> spaces, literal ``<ImageHere>`` removed."""
    text = _LINE_BREAKS.sub(" ", text)
    while IMAGE_SLOT in text:
        text = text.replace(IMAGE_SLOT, "")
    return text


def turn_line(turn: TurnLike) -> str:
    """One conversation line for a turn (images only count for user turns)."""
    speaker = _SPEAKERS[turn.role]
    images = IMAGE_MARKUP * len(turn.images) if turn.role == "user" else ""
    return f"{speaker}: {images}{sanitize_text(turn.text)}"


def build_prompt(turns: Sequence[TurnLike]) -> str:
    """The full prompt text, ending with a newline and ``システム: ``."""
    return "\n".join(turn_line(t) for t in turns) + f"\n{ASSISTANT_SPEAKER}: "


@dataclass(frozen=True)
class TokenizedPrompt:
    """Text segments' ids around the image slots: ``segments[i]`` precedes image ``i``."""

    text: str
    segments: tuple[tuple[int, ...], ...]
    num_queries: int

    @property
    def num_images(self) -> int:
        return len(self.segments) - 1

    @property
    def length(self) -> int:
        """Positions the prompt occupies in the language model."""
        return sum(len(s) for s in self.segments) + self.num_images * self.num_queries


def tokenize_prompt(prompt: str, tokenizer: Tokenizer, *, num_queries: int) -> TokenizedPrompt:
    """Split on ``<ImageHere>`` and tokenize each segment separately, with no special token."""
    segments = tuple(tuple(tokenizer.encode(part)) for part in prompt.split(IMAGE_SLOT))
    return TokenizedPrompt(text=prompt, segments=segments, num_queries=num_queries)


def _drop_order(turns: Sequence[TurnLike]) -> list[int]:
    """Indices in the order turns are dropped: oldest first, the most recent image turn last, never the
    newest turn."""
    newest = len(turns) - 1
    pinned = next((i for i in reversed(range(len(turns))) if _image_count(turns[i])), None)
    pinned = None if pinned == newest else pinned  # the newest turn is kept anyway
    order = [i for i in range(newest) if i != pinned]
    return order + ([pinned] if pinned is not None else [])


def fit_context(
    turns: Sequence[TurnLike],
    tokenizer: Tokenizer,
    *,
    num_queries: int,
    max_new_tokens: int,
    context_length: int,
) -> tuple[list[TurnLike], TokenizedPrompt]:
    """Drop the oldest whole turns until prompt + ``max_new_tokens`` fits ``context_length``.

    The most recent image-carrying turn is kept as long as the prompt still fits with it; the newest
    (last) turn is always kept, and :class:`ContextTooLongError` is raised when it alone cannot fit.
    Returns the kept turns (in order) and their tokenized prompt.

    Each turn is tokenized at most once: turns are taken in the reverse of the drop order (the newest, the
    latest image turn, then the others from newest to oldest) while their token counts fit, and the turns
    before the first that does not fit are never tokenized. The kept prompt is then tokenized once as the
    reference does (by segments between images); should sentencepiece join pieces across a turn boundary so
    that it comes out longer than the sum, the next turn in the drop order goes too, until it fits.
    """
    budget = context_length - max_new_tokens
    order = _drop_order(turns)
    kept = {len(turns) - 1}
    used = _token_count(f"{ASSISTANT_SPEAKER}: ", tokenizer) + _turn_cost(turns[-1], tokenizer, num_queries)
    for index in reversed(order):
        used += _turn_cost(turns[index], tokenizer, num_queries)
        if used > budget:
            break
        kept.add(index)
    while True:
        chosen = [turn for index, turn in enumerate(turns) if index in kept]
        prompt = tokenize_prompt(build_prompt(chosen), tokenizer, num_queries=num_queries)
        if prompt.length <= budget:
            return chosen, prompt
        if len(kept) == 1:
            raise ContextTooLongError(prompt.length, max(budget, 0))
        kept.remove(next(index for index in order if index in kept))


def _turn_cost(turn: TurnLike, tokenizer: Tokenizer, num_queries: int) -> int:
    """Positions a turn's line and the newline after it take in the prompt."""
    parts = (turn_line(turn) + "\n").split(IMAGE_SLOT)
    return sum(_token_count(part, tokenizer) for part in parts) + _image_count(turn) * num_queries


def _token_count(text: str, tokenizer: Tokenizer) -> int:
    return len(tokenizer.encode(text)) if text else 0


def _image_count(turn: TurnLike) -> int:
    return len(turn.images) if turn.role == "user" else 0


def fit_question(turns: Sequence[TurnLike], tokenizer: Tokenizer, *, num_queries: int, max_new_tokens: int,
                 context_length: int, cut: Callable[[TurnLike, int], TurnLike] | None,
                 ) -> tuple[list[TurnLike], TokenizedPrompt, bool]:
    """:func:`fit_context`, except that a newest turn too long to fit on its own is cut (its start is kept,
    ``cut(turn, chars)`` shortens a turn) to the longest start that fits, alone. Returns the kept turns,
    their prompt, and whether the question was cut; :class:`ContextTooLongError` when even its images
    alone do not fit, or when the question is too long and ``cut`` is None."""
    def fitted(candidate: Sequence[TurnLike]) -> tuple[list[TurnLike], TokenizedPrompt]:
        return fit_context(candidate, tokenizer, num_queries=num_queries, max_new_tokens=max_new_tokens,
                           context_length=context_length)

    try:
        return (*fitted(turns), False)
    except ContextTooLongError:
        if cut is None:
            raise
        question = turns[-1]
        kept_chars = _longest_fitting(len(question.text), lambda chars: _fits(fitted, [cut(question, chars)]))
        return (*fitted([cut(question, kept_chars)]), True)


def _fits(fitted: Callable, turns: list[TurnLike]) -> bool:
    try:
        fitted(turns)
    except ContextTooLongError:
        return False
    return True


def _longest_fitting(upper: int, fits: Callable[[int], bool]) -> int:
    """The largest ``n`` in ``[0, upper]`` with ``fits(n)`` (fitting is monotonic); raises
    :class:`ContextTooLongError` (from the caller's ``fitted``) when not even 0 fits."""
    low, high = 0, upper
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low
