"""The seam between the scheduler (decides what runs) and the engine (executes steps on the device).

The scheduler is plain Python and owns batching policy: which sequences are admitted, when they are
prefilled, and which ones advance together in each decode step. The engine only executes what it is
given. Engine calls are blocking. ``prefill``, ``decode`` and ``release`` are made from a single dedicated
thread, never concurrently; ``prepare`` runs on other threads (several at once) at the same time as
those, so an engine keeps what ``prepare`` touches safe to share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from model_worker.wire.protocol import ChatRequest, ErrorCode, FinishReason


class EngineError(Exception):
    """A request-level failure with a protocol error code (bad image, context too long, ...)."""

    def __init__(self, code: ErrorCode, message: str, **extra: object) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


@dataclass(eq=False)
class Sequence:
    """One request's state inside the engine."""

    request: ChatRequest
    prompt_tokens: int = 0
    output_ids: list[int] = field(default_factory=list)
    text: str = ""  # the reply decoded so far (stop marker and anything after it excluded)
    finish_reason: FinishReason | None = None
    question_cut: bool = False  # the newest turn alone was too long for the context: only its start is read
    state: object = None  # engine-private: KV cache slot, sampler, pending image embeddings...

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class Engine(Protocol):
    max_batch_size: int

    def prepare(self, request: ChatRequest) -> Sequence:
        """CPU-side work before admission, off the engine thread: decode images, build and tokenize the
        prompt, apply the context budget. Raises :class:`EngineError` (``bad_image``, ``unknown_image``,
        ``context_too_long``, ``bad_request``)."""

    def prefill(self, seqs: list[Sequence]) -> None:
        """Encode images, run the prompts, and sample each sequence's first token."""

    def decode(self, seqs: list[Sequence]) -> None:
        """Advance every given unfinished sequence by one token (together, when the engine batches).
        Updates ``output_ids``, ``text`` and sets ``finish_reason`` when a sequence ends."""

    def release(self, seq: Sequence) -> None:
        """Free what the engine holds for a sequence (finished, cancelled or failed)."""
