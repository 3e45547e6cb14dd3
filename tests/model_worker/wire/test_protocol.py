"""The wire protocol: every event round-trips through its NDJSON line, the caps refuse what a request may not
carry, and readiness says what a bot needs to know (capacity, protocol version)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from model_worker.wire.protocol import (
    MAX_IMAGES_PER_REQUEST,
    MAX_REQUEST_TEXT_CHARS,
    MAX_TURN_CHARS,
    PROTOCOL_VERSION,
    ChatRequest,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    FinishReason,
    ImageRef,
    QueuedEvent,
    ReadyInfo,
    RestartedEvent,
    StartedEvent,
    TokenEvent,
    Turn,
    Usage,
    dump_event,
    parse_event,
    protocol_mismatch,
)


@pytest.mark.parametrize("event", [
    QueuedEvent(position=3), StartedEvent(), RestartedEvent(attempt=2), TokenEvent(text="こんにちは\n"),
    DoneEvent(text="ok", finish_reason=FinishReason.STOP, usage=Usage(prompt_tokens=5, completion_tokens=1),
              question_cut=True),
    ErrorEvent(code=ErrorCode.BUSY, message="full", retry_after=5.0),
    ErrorEvent(code=ErrorCode.UNKNOWN_IMAGE, message="resend", hashes=["a" * 64]),
])
def test_every_event_round_trips_as_one_ndjson_line(event):
    line = dump_event(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_event(line) == event


def test_the_caps_refuse_what_a_request_may_not_carry():
    def ask(*turns: Turn) -> ChatRequest:
        return ChatRequest(conversation=list(turns))

    ask(Turn(role="user", text="x" * MAX_TURN_CHARS))
    with pytest.raises(ValidationError, match="at most 8192 characters"):
        ask(Turn(role="user", text="x" * (MAX_TURN_CHARS + 1)))
    many = [Turn(role=role, text="x" * MAX_TURN_CHARS) for role in ("user", "assistant", "user")]
    assert sum(len(t.text) for t in many) > MAX_REQUEST_TEXT_CHARS
    with pytest.raises(ValidationError, match="send only its most recent turns"):
        ask(*many)
    image = ImageRef(sha256="b" * 64)
    with pytest.raises(ValidationError, match=f"at most {MAX_IMAGES_PER_REQUEST} are accepted"):
        ask(Turn(role="user", images=[image] * 9), Turn(role="assistant"), Turn(role="user", images=[image] * 9))


def test_readiness_gives_the_capacity_and_a_clear_word_on_another_protocol():
    assert ReadyInfo(ready=True, max_batch_size=8, max_queue=64).capacity == 72
    assert ReadyInfo(ready=True).capacity is None
    assert protocol_mismatch(ReadyInfo(ready=True), where="unix:/w.sock") is None
    message = protocol_mismatch(ReadyInfo(ready=True, protocol_version=PROTOCOL_VERSION + 1), where="unix:/w.sock")
    assert f"speaks protocol version {PROTOCOL_VERSION + 1}" in message and "unix:/w.sock" in message
