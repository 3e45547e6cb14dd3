"""Building requests and reading event streams, shared by every test that talks to a worker or scheduler."""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, Iterable

from model_worker.scheduling.ticket import Ticket
from model_worker.wire.protocol import (
    MAX_NEW_TOKENS_LIMIT,
    ChatRequest,
    DoneEvent,
    Event,
    ImageRef,
    TokenEvent,
    Turn,
)

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

#: Long enough that a request is certainly still running while a test acts on it (it gets cancelled).
LONG = MAX_NEW_TOKENS_LIMIT


def one_turn(text: str = "Tell me about the sea.", *, images: Iterable[bytes | ImageRef | dict] = (),
             user: str = "tester", request_id: str | None = None, greedy: bool = True,
             max_new_tokens: int = 16, **generation: object) -> ChatRequest:
    """A one-turn request (greedy unless told otherwise); images as bytes, references or raw dicts."""
    refs = [ImageRef.from_bytes(image) if isinstance(image, bytes) else image for image in images]
    extra = {"request_id": request_id} if request_id else {}
    return ChatRequest(user=user, conversation=[Turn(role="user", text=text, images=refs)],
                       generation={"greedy": greedy, "max_new_tokens": max_new_tokens, **generation}, **extra)


def conversation(turns: list[Turn], *, user: str = "tester", max_new_tokens: int = 12,
                 **generation: object) -> ChatRequest:
    """A greedy request for several turns."""
    return ChatRequest(user=user, conversation=turns,
                       generation={"greedy": True, "max_new_tokens": max_new_tokens, **generation})


async def collect(stream: AsyncIterable[Event] | Ticket) -> list[Event]:
    """Every event of a stream: a client's ``chat()``, or a scheduler ticket's events."""
    events = stream.events() if isinstance(stream, Ticket) else stream
    return [event async for event in events]


async def read_until_token(events: AsyncIterable[Event]) -> list[Event]:
    """Read a stream up to and including its first ``token`` event (the request is then running)."""
    seen = []
    async for event in events:
        seen.append(event)
        if isinstance(event, TokenEvent):
            return seen
    raise AssertionError(f"the stream ended before any token: {seen}")


def reply_of(events: list[Event]) -> tuple[str, DoneEvent]:
    """The concatenated token deltas and the final ``done`` event."""
    done = events[-1]
    assert isinstance(done, DoneEvent), events
    return "".join(e.text for e in events if isinstance(e, TokenEvent)), done


def metric_value(metrics_text: str, name: str, labels: str = "") -> float:
    """A metric of a Prometheus text exposition, summed over the samples that carry every one of
    ``labels`` (``'code="busy"'`` or ``'code="busy",front_end="ndjson"'``); 0 when absent."""
    wanted = set(_LABEL.findall(labels))
    total = 0.0
    for line in metrics_text.splitlines():
        sample, _, value = line.rpartition(" ")
        sample_name, _, sample_labels = sample.partition("{")
        if sample_name == name and wanted <= set(_LABEL.findall(sample_labels)):
            total += float(value)
    return total
