"""The JSON shapes of the OpenAI chat-completions API: completions, stream chunks, errors, the model list.

Pure: plain dicts, and the server-sent-events framing of the stream (``data: {...}`` and a blank line,
ending with ``data: [DONE]``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from model_worker.wire.protocol import ErrorCode, FinishReason, Usage

SSE_DONE = b"data: [DONE]\n\n"

# A stop requested by the client (a stop text, or cancelling) is an ordinary stop in OpenAI's terms.
_FINISH_REASONS = {FinishReason.STOP: "stop", FinishReason.LENGTH: "length", FinishReason.CANCELLED: "stop"}
# OpenAI's own codes where it has one for the same thing; otherwise the worker's error code.
_OPENAI_CODES = {ErrorCode.CONTEXT_TOO_LONG: "context_length_exceeded"}
_CODE_OF_STATUS = {401: "invalid_api_key", 404: "model_not_found"}
_TYPE_OF_STATUS = {429: "rate_limit_error"}


def finish_reason(reason: FinishReason) -> str:
    """OpenAI's name for how an answer ended (``stop`` or ``length``)."""
    return _FINISH_REASONS[reason]


def usage_body(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


@dataclass(frozen=True)
class Completion:
    """One chat completion's identity, shared by its whole answer or by every chunk of its stream."""

    id: str
    created: int
    model: str
    include_usage: bool = False  # a stream's chunks carry ``usage: null`` and a usage chunk ends it

    def message(self, text: str, *, finish: str, usage: Usage) -> dict[str, object]:
        """The whole answer, as a ``chat.completion`` object."""
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish}
        return {**self._head("chat.completion"), "choices": [choice], "usage": usage_body(usage)}

    def chunk(self, delta: dict[str, str], *, finish: str | None = None) -> bytes:
        """One ``chat.completion.chunk`` event of the stream."""
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        body = {**self._head("chat.completion.chunk"), "choices": [choice]}
        if self.include_usage:
            body["usage"] = None
        return sse_event(body)

    def usage_chunk(self, usage: Usage) -> bytes:
        """The last chunk when the client asked for usage: no choices, the token counts."""
        return sse_event({**self._head("chat.completion.chunk"), "choices": [], "usage": usage_body(usage)})

    def _head(self, kind: str) -> dict[str, object]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": None}


def sse_event(body: dict[str, object]) -> bytes:
    """One server-sent event carrying ``body`` as JSON."""
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


def error_body(status: int, message: str, *, code: ErrorCode | str | None,
               param: str | None = None) -> dict[str, object]:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    openai_code = _CODE_OF_STATUS.get(status) or _OPENAI_CODES.get(code, code)
    kind = _TYPE_OF_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param,
                      "code": str(openai_code) if openai_code is not None else None}}


def model_list(model: str, *, created: int) -> dict[str, object]:
    """The body of ``GET /v1/models``: this worker's one model."""
    return {"object": "list", "data": [model_entry(model, created=created)]}


def model_entry(model: str, *, created: int) -> dict[str, object]:
    return {"id": model, "object": "model", "created": created, "owned_by": "rinna"}
