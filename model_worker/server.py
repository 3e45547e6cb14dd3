"""The worker's HTTP API (aiohttp): health, readiness, metrics, and streamed chat over NDJSON.

The socket is bound first and the model loads on the engine thread afterwards, so ``/readyz`` can report
loading progress. Every request-level failure is answered as one protocol ``error`` event (NDJSON), with an
HTTP status that says the same for proxies and load balancers.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from pydantic import ValidationError

from model_worker.metrics import METRICS_CONTENT_TYPE, WorkerMetrics
from model_worker.protocol import (
    NDJSON,
    ChatRequest,
    ErrorCode,
    ErrorEvent,
    ReadyInfo,
    dump_event,
)
from model_worker.scheduler import Rejected, Scheduler

log = logging.getLogger(__name__)

_STATUS_OF_REJECTION = {ErrorCode.BUSY: 429, ErrorCode.SHUTTING_DOWN: 503, ErrorCode.BAD_REQUEST: 409}


@dataclass
class WorkerState:
    """What the handlers share: the scheduler once the model is loaded, and what loading is doing."""

    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    scheduler: Scheduler | None = None
    model_info: dict[str, object] = field(default_factory=dict)
    progress: str = "starting"
    accepting: bool = True
    max_body_bytes: int = 64 * 2**20

    def set_progress(self, message: str) -> None:
        """Record what loading is doing (called from the engine thread: a plain attribute store)."""
        self.progress = message


STATE = web.AppKey("state", WorkerState)


def create_app(state: WorkerState, *, token: str | None) -> web.Application:
    """The aiohttp application; with a ``token``, every request must carry ``Authorization: Bearer``."""
    middlewares = [_bearer_auth(token)] if token else []
    app = web.Application(client_max_size=state.max_body_bytes, middlewares=middlewares)
    app[STATE] = state
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/chat", chat)
    app.router.add_delete("/v1/requests/{request_id}", cancel)
    return app


def error_response(status: int, event: ErrorEvent) -> web.Response:
    """One ``error`` event as a complete NDJSON response."""
    return web.Response(status=status, body=dump_event(event), content_type=NDJSON)


def _refuse(request: web.Request, status: int, event: ErrorEvent) -> web.Response:
    """Count and answer a request refused before it reached the scheduler."""
    request.app[STATE].metrics.errors.labels(event.code.value).inc()
    return error_response(status, event)


# ---- handlers -----------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """200 while the process is alive (loaded or not)."""
    return web.json_response({"alive": True})


async def readyz(request: web.Request) -> web.Response:
    """200 with model info once the model is loaded; 503 with loading progress before that."""
    state = request.app[STATE]
    if state.scheduler is None or not state.accepting:
        status = 503
        info = ReadyInfo(ready=False, progress=state.progress if state.accepting else "shutting down")
    else:
        status = 200
        info = ReadyInfo(ready=True, queue_depth=state.scheduler.queue_depth,
                         running=state.scheduler.running_count, **state.model_info)
    return web.Response(status=status, text=info.model_dump_json(exclude_none=True),
                        content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def chat(request: web.Request) -> web.StreamResponse:
    """Validate a chat request, queue it, and stream its events as NDJSON until ``done``/``error``."""
    state = request.app[STATE]
    chat_request = await _read_chat_request(request)
    if isinstance(chat_request, web.Response):
        return chat_request
    if state.scheduler is None or not state.accepting:
        return _refuse(request, 503, _not_serving_event(state))
    try:
        ticket = state.scheduler.submit(chat_request)
    except Rejected as rejected:
        return error_response(_STATUS_OF_REJECTION.get(rejected.event.code, 503), rejected.event)
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    try:
        await response.prepare(request)
        async for event in ticket.events():
            await response.write(dump_event(event))
    except ConnectionResetError:
        log.info("client of request %s went away", ticket.request_id)
    finally:
        # A client that disconnects (the handler is cancelled) or fails to read cancels its request.
        if not ticket.ended:
            state.scheduler.cancel(ticket.request_id)
    return response


async def cancel(request: web.Request) -> web.Response:
    """Cancel a waiting or running request; 404 when there is none with that id."""
    state = request.app[STATE]
    request_id = request.match_info["request_id"]
    found = state.scheduler is not None and state.scheduler.cancel(request_id)
    if found:
        log.info("request %s cancelled by its client", request_id)
    return web.json_response({"cancelled": found}, status=200 if found else 404)


# ---- helpers ------------------------------------------------------------------------------------


async def _read_chat_request(request: web.Request) -> ChatRequest | web.Response:
    """The parsed request, or the 400/413 response that explains why it is not one."""
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit_mb = request.app[STATE].max_body_bytes / 2**20
        message = f"the request body is larger than this worker accepts ({limit_mb:g} MB); send smaller images"
        log.info("rejected an oversized request body")
        return _refuse(request, 413, ErrorEvent(code=ErrorCode.BAD_REQUEST, message=message))
    try:
        return ChatRequest.model_validate_json(body)
    except ValidationError as exc:
        reason = describe_validation_error(exc)
        log.info("rejected a malformed chat request: %s", reason)
        return _refuse(request, 400, ErrorEvent(code=ErrorCode.BAD_REQUEST, message=reason))


def describe_validation_error(exc: ValidationError, *, limit: int = 5) -> str:
    """A short human reason such as ``conversation.0.role: Input should be 'user' or 'assistant'``."""
    parts = []
    for error in exc.errors(include_url=False)[:limit]:
        where = ".".join(str(part) for part in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)


def _not_serving_event(state: WorkerState) -> ErrorEvent:
    if not state.accepting:
        return ErrorEvent(code=ErrorCode.SHUTTING_DOWN, message="the worker is shutting down")
    return ErrorEvent(code=ErrorCode.LOADING, message=f"the model is still loading ({state.progress})",
                      retry_after=5.0)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _bearer_auth(token: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check_bearer(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, expected):
            log.warning("refused a request without the right bearer token from %s", request.remote)
            return error_response(401, ErrorEvent(code=ErrorCode.BAD_REQUEST,
                                                  message="missing or wrong bearer token"))
        return await handler(request)

    return check_bearer
