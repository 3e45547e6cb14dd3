"""The worker's HTTP listener (aiohttp): health, readiness and metrics, plus the routes of the HTTP front ends.

The socket is bound first and the model loads on the engine thread afterwards, so ``/readyz`` can report
loading progress. With a token, every request must carry ``Authorization: Bearer TOKEN``; a front end's
routes refuse a request without it in that front end's own error format.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from model_worker.scheduling.metrics import METRICS_CONTENT_TYPE, WorkerMetrics
from model_worker.scheduling.scheduler import Scheduler
from model_worker.serve.front_end import HttpFrontEnd, Unauthorized
from model_worker.serve.ndjson_api import error_response
from model_worker.wire.protocol import DEFAULT_MAX_BODY_BYTES, ErrorCode, ErrorEvent, HealthInfo, ReadyInfo

log = logging.getLogger(__name__)


@dataclass
class WorkerState:
    """What the health and readiness handlers report: loading progress, then the scheduler and model info."""

    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    scheduler: Scheduler | None = None
    model_info: dict[str, object] = field(default_factory=dict)
    progress: str = "starting"
    accepting: bool = True

    def set_progress(self, message: str) -> None:
        """Record what loading is doing (called from the engine thread: a plain attribute store)."""
        self.progress = message


STATE = web.AppKey("state", WorkerState)


def create_app(state: WorkerState, front_ends: Sequence[HttpFrontEnd], *, token: str | None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> web.Application:
    """The aiohttp application: health, readiness, metrics and every front end's routes."""
    owners: dict[web.AbstractResource, HttpFrontEnd] = {}
    middlewares = [_bearer_auth(token, owners)] if token else []
    app = web.Application(client_max_size=max_body_bytes, middlewares=middlewares)
    app[STATE] = state
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    for front_end in front_ends:
        for route in app.router.add_routes(front_end.routes()):
            owners[route.resource] = front_end
    return app


async def healthz(request: web.Request) -> web.Response:
    """200 while the process is alive and its engine is not stuck (loaded or not); 503 with the reason when
    an engine step has run past the watchdog's limit (the supervisor then replaces the worker)."""
    scheduler = request.app[STATE].scheduler
    reason = scheduler.stalled() if scheduler is not None else None
    if reason is not None:
        log.warning("unhealthy: %s", reason)
    info = HealthInfo(healthy=reason is None, reason=reason)
    return web.Response(status=200 if reason is None else 503, text=info.model_dump_json(exclude_none=True),
                        content_type="application/json")


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


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _bearer_auth(token: str, owners: Mapping[web.AbstractResource, HttpFrontEnd],
                 ) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Refuse requests without ``Authorization: Bearer TOKEN``: on a front end's route in its own format
    (``owners`` says whose route is whose), elsewhere as one NDJSON ``error`` event."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check_bearer(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode("utf-8", "replace")
        if hmac.compare_digest(given, expected):
            return await handler(request)
        log.warning("refused a request without the right bearer token from %s", request.remote)
        refusal = Unauthorized(ErrorEvent(code=ErrorCode.BAD_REQUEST, message="missing or wrong bearer token"))
        owner = owners.get(request.match_info.route.resource)
        if owner is not None:
            return owner.refusal_response(refusal.status, refusal)
        return error_response(refusal.status, refusal.event)

    return check_bearer
