"""The bot's view of the model worker: one interface, whatever the transport (HTTP or Redis).

The chat service and adapters only use :class:`WorkerClient` and the typed errors below.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from model_worker.wire.protocol import ChatRequest, ErrorCode, ErrorEvent, Event, ReadyInfo


class WorkerError(Exception):
    """An ``error`` event (or a transport failure) as a typed exception."""

    code: ErrorCode = ErrorCode.INTERNAL
    recoverable = True

    def __init__(self, message: str, *, retry_after: float | None = None,
                 hashes: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.hashes = hashes or []


class WorkerBusy(WorkerError):
    code = ErrorCode.BUSY


class BadRequest(WorkerError):
    code = ErrorCode.BAD_REQUEST


class BadImage(WorkerError):
    code = ErrorCode.BAD_IMAGE


class UnknownImage(WorkerError):
    code = ErrorCode.UNKNOWN_IMAGE


class ContextTooLong(WorkerError):
    code = ErrorCode.CONTEXT_TOO_LONG


class WorkerTimeout(WorkerError):
    code = ErrorCode.TIMEOUT


class WorkerLoading(WorkerError):
    code = ErrorCode.LOADING


class WorkerUnavailable(WorkerError):
    """The worker cannot be reached, or died while answering."""

    code = ErrorCode.UNAVAILABLE


class WorkerShuttingDown(WorkerError):
    code = ErrorCode.SHUTTING_DOWN


class WorkerInternal(WorkerError):
    code = ErrorCode.INTERNAL
    recoverable = False


_BY_CODE: dict[ErrorCode, type[WorkerError]] = {
    cls.code: cls
    for cls in (WorkerBusy, BadRequest, BadImage, UnknownImage, ContextTooLong, WorkerTimeout,
                WorkerLoading, WorkerUnavailable, WorkerShuttingDown, WorkerInternal)
}


def error_from_event(event: ErrorEvent) -> WorkerError:
    """Map an ``error`` event to its typed exception."""
    cls = _BY_CODE.get(event.code, WorkerInternal)
    return cls(event.message, retry_after=event.retry_after, hashes=event.hashes)


class WorkerClient(Protocol):
    def chat(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Stream the events of one request. ``error`` events are raised as :class:`WorkerError`;
        the stream ends after the ``done`` event."""

    async def cancel(self, request_id: str) -> None:
        """Ask the worker to stop a request; a no-op when it already ended."""

    async def ready(self) -> ReadyInfo:
        """The worker's readiness (raises :class:`WorkerUnavailable` when unreachable)."""

    async def close(self) -> None: ...
