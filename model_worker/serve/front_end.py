"""The one small interface every front end of the worker implements, and what the HTTP ones share.

A front end turns its own kind of request (the bot's NDJSON API, a job on the Redis queue, an
OpenAI-compatible chat completion) into a :class:`~model_worker.wire.protocol.ChatRequest` for the
scheduler and its events back into its own replies. It never decides admission or batching: the scheduler
does. Its life: created before the model loads, :meth:`FrontEnd.start` once the scheduler exists,
:meth:`FrontEnd.stop_taking_work` when shutdown begins, :meth:`FrontEnd.close` at the end.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Protocol, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from model_worker.scheduling.metrics import WorkerMetrics
from model_worker.scheduling.scheduler import Scheduler
from model_worker.scheduling.ticket import Rejected, Ticket
from model_worker.wire.protocol import ChatRequest, ErrorCode, ErrorEvent, Event

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


class FrontEnd(Protocol):
    name: str  # how logs and metrics call it

    def start(self, scheduler: Scheduler) -> None:
        """Begin handing requests to ``scheduler`` (the model is loaded)."""

    def stop_taking_work(self) -> None:
        """Refuse new requests; those already submitted run on."""

    async def close(self) -> None:
        """Release what the front end holds (connections, background tasks)."""


class HttpFrontEnd:
    """Base of the front ends served on the worker's HTTP listener: holds the scheduler once loaded, and
    turns a request into a running ticket whose generation stops when the client goes away."""

    name = "http"

    def __init__(self, *, metrics: WorkerMetrics, loading_progress: Callable[[], str]) -> None:
        self._metrics = metrics
        self._progress = loading_progress
        self._scheduler: Scheduler | None = None
        self._accepting = True

    def routes(self) -> list[web.RouteDef]:
        """The routes this front end serves."""
        raise NotImplementedError

    def start(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    def stop_taking_work(self) -> None:
        self._accepting = False

    async def close(self) -> None:
        """Nothing to release: the listener is closed by the process."""

    @property
    def scheduler(self) -> Scheduler | None:
        return self._scheduler

    def check_open(self) -> Scheduler:
        """The scheduler; :class:`Rejected` while loading or shutting down."""
        if not self._accepting:
            raise Rejected(ErrorEvent(code=ErrorCode.SHUTTING_DOWN, message="the worker is shutting down"))
        if self._scheduler is None:
            raise Rejected(ErrorEvent(code=ErrorCode.LOADING, retry_after=5.0,
                                      message=f"the model is still loading ({self._progress()})"))
        return self._scheduler

    def check_room(self) -> None:
        """:class:`Rejected` when a request could not be taken now (loading, shutting down, queue full):
        called before a request's body is read, so a refused client costs nothing."""
        self.check_open().check_room()

    def submit(self, request: ChatRequest) -> Ticket:
        """Hand a request to the scheduler; :class:`Rejected` while loading, shutting down or full."""
        return self.check_open().submit(request, front_end=self.name)

    def refused(self, rejected: Rejected) -> int:
        """Count a refusal and return the HTTP status that says the same."""
        self._metrics.errors.labels(rejected.event.code.value, self.name).inc()
        log.info("%s refused a request: %s", self.name, rejected.event.code.value)
        return http_status(rejected)

    def refusal_response(self, status: int, rejected: Rejected) -> web.Response:
        """A refusal as this front end's clients expect it (the auth check answers through it too)."""
        raise NotImplementedError

    def stop_generation(self, ticket: Ticket) -> None:
        """Cancel a ticket that has not ended (it ends with ``done``/``cancelled`` at the next step)."""
        if not ticket.ended and self._scheduler is not None:
            self._scheduler.cancel(ticket.request_id)

    async def events_until_done(self, ticket: Ticket) -> AsyncIterator[Event]:
        """The ticket's events; a client that leaves early (the handler is cancelled, or writing fails)
        cancels the request."""
        try:
            async for event in ticket.events():
                yield event
        finally:
            self.stop_generation(ticket)


class Refusal(Rejected):
    """A refusal by a front end, before the scheduler sees the request, with its own HTTP status."""

    status = 400


class Malformed(Refusal):
    """A request that does not follow the front end's format (HTTP 400); ``param`` names the field at
    fault where one is (as the client spelt it)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(ErrorEvent(code=ErrorCode.BAD_REQUEST, message=message))
        self.param = param


class Unauthorized(Refusal):
    """A request without the worker's bearer token (HTTP 401)."""

    status = 401


class BodyTooLarge(Refusal):
    """A request body over the worker's limit (HTTP 413)."""

    status = 413


# A scheduler's bad_request means the request id is in use; the others end a submitted request.
_STATUS_OF_CODE = {ErrorCode.BUSY: 429, ErrorCode.SHUTTING_DOWN: 503, ErrorCode.LOADING: 503,
                   ErrorCode.BAD_REQUEST: 409, ErrorCode.BAD_IMAGE: 400, ErrorCode.UNKNOWN_IMAGE: 400,
                   ErrorCode.CONTEXT_TOO_LONG: 400, ErrorCode.TIMEOUT: 504, ErrorCode.INTERNAL: 500}


def http_status(rejected: Rejected) -> int:
    """The HTTP status that says the same as a refusal, for proxies and load balancers."""
    if isinstance(rejected, Refusal):
        return rejected.status
    return error_status(rejected.event)


def error_status(event: ErrorEvent) -> int:
    """The HTTP status that says the same as an ``error`` event."""
    return _STATUS_OF_CODE.get(event.code, 503)


async def read_body(request: web.Request, *, max_bytes: int) -> bytes:
    """The request body; :class:`BodyTooLarge` beyond ``max_bytes``."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        log.info("rejected an oversized request body")
        raise BodyTooLarge(ErrorEvent(
            code=ErrorCode.BAD_REQUEST,
            message=f"the request body is larger than this worker accepts ({max_bytes / 2**20:g} MB); "
                    "send smaller images")) from None


def validated(model: type[M], data: bytes | Mapping[str, object], *,
              names: Mapping[str, str] | None = None) -> M:
    """``data`` (JSON bytes or a mapping) as ``model``; :class:`Malformed` with the reason otherwise.
    ``names`` renames fields in the reason to the client's own names."""
    try:
        if isinstance(data, bytes):
            return model.model_validate_json(data)
        return model.model_validate(data)
    except ValidationError as exc:
        reason = describe_validation_error(exc, names=names or {})
        log.info("rejected a malformed %s: %s", model.__name__, reason)
        raise Malformed(reason, param=_where(exc.errors(include_url=False)[0], names or {}) or None) from None


def describe_validation_error(exc: ValidationError, *, limit: int = 5,
                              names: Mapping[str, str] | None = None) -> str:
    """A short human reason such as ``conversation.0.role: Input should be 'user' or 'assistant'``."""
    parts = []
    for error in exc.errors(include_url=False)[:limit]:
        where = _where(error, names or {})
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)


def _where(error: Mapping[str, object], names: Mapping[str, str]) -> str:
    """Where an error is, as ``a.0.b``; a part that ``names`` maps to ``""`` is left out."""
    parts = (names.get(str(part), str(part)) for part in error["loc"])
    return ".".join(part for part in parts if part)
