"""What of a conversation goes to the worker: the newest turns that can fit the model's context.

The bot estimates, the worker fits exactly: the estimate errs on the side of sending a little more than fits
(it counts at most a few characters per token), and the worker drops the oldest turns that do not fit. A
failed or stopped question is left out (it had no answer), every turn's text is cut to the protocol's cap,
and images go with the turns that are kept, newest first, within a count and a byte budget. A long
conversation is therefore never sent, or even read from the store, whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bot.chat.store import StoredTurn
from model_worker.wire.protocol import (
    CONTEXT_LENGTH,
    MAX_IMAGES_PER_REQUEST,
    MAX_REQUEST_TEXT_CHARS,
    MAX_TURN_CHARS,
    MAX_TURNS,
    ImageRef,
    Turn,
)

#: Characters one token stands for at most in the estimate (English averages about four; Japanese text
#: and byte-fallback pieces have fewer, so real prompts are shorter than estimated, never longer).
CHARS_PER_TOKEN_AT_MOST = 4
#: An image fills 32 of the model's positions.
IMAGE_POSITIONS = 32
_LEFT_OUT = ("failed", "cancelled")  # user turns that got no answer


@dataclass(frozen=True)
class ContextBudget:
    """How much of a conversation one request carries."""

    text_chars: int  # the turns' text, images counted as their positions' worth of characters
    image_bytes: int  # the images' raw bytes (base64 adds a third on the wire)
    images: int = MAX_IMAGES_PER_REQUEST

    @classmethod
    def for_answer(cls, *, max_new_tokens: int, image_bytes: int) -> ContextBudget:
        """The budget that leaves room for an answer of ``max_new_tokens``."""
        positions = CONTEXT_LENGTH - max_new_tokens
        return cls(text_chars=min(MAX_REQUEST_TEXT_CHARS, positions * CHARS_PER_TOKEN_AT_MOST),
                   image_bytes=image_bytes)


def conversation_tail(turns: Sequence[StoredTurn], budget: ContextBudget) -> list[StoredTurn]:
    """The newest answered turns (and the question being asked, the last turn) that fit the budget,
    oldest first; the question is always kept."""
    kept: list[StoredTurn] = []
    used = 0
    for index, turn in enumerate(reversed(turns)):
        if index > 0 and turn.role == "user" and turn.status in _LEFT_OUT:
            continue
        cost = min(len(turn.text), MAX_TURN_CHARS) + IMAGE_POSITIONS * CHARS_PER_TOKEN_AT_MOST * len(turn.image_hashes)
        if kept and (used + cost > budget.text_chars or len(kept) >= MAX_TURNS):
            break
        kept.append(turn)
        used += cost
    return _without_leading_answer(kept[::-1])


def request_turns(tail: Sequence[StoredTurn], images: Mapping[str, bytes], budget: ContextBudget) -> list[Turn]:
    """The protocol's turns for ``tail`` (whose texts :func:`conversation_tail` kept within the caps), each
    text cut to the per-turn cap, images as data, newest first within the budget (the question's own always
    go, up to the count). Blocking: base64-encoding photos takes a while, so run it off the event loop."""
    count, size = budget.images, budget.image_bytes
    per_turn: list[list[ImageRef]] = []
    for index, turn in enumerate(reversed(tail)):
        held = [images[sha] for sha in turn.image_hashes if sha in images][:count]
        if index > 0 and sum(map(len, held)) > size:
            held = []
        count, size = count - len(held), size - sum(map(len, held))
        per_turn.append([ImageRef.from_bytes(data) for data in held])
    return [Turn(role=turn.role, text=turn.text[:MAX_TURN_CHARS], images=refs)
            for turn, refs in zip(tail, per_turn[::-1], strict=True)]


def _without_leading_answer(turns: list[StoredTurn]) -> list[StoredTurn]:
    """A kept tail that begins with an answer whose question was dropped starts after it."""
    while len(turns) > 1 and turns[0].role == "assistant":
        turns = turns[1:]
    return turns
