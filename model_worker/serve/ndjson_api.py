"""The bot's front end: ``POST /v1/chat`` streams a request's events as NDJSON, ``DELETE
/v1/requests/{id}`` cancels one. Every refusal is one protocol ``error`` event with an HTTP status that
says the same."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

from model_worker.scheduling.metrics import WorkerMetrics
from model_worker.scheduling.ticket import Rejected
from model_worker.serve.front_end import HttpFrontEnd, read_body, validated
from model_worker.wire.protocol import NDJSON, ChatRequest, ErrorEvent, dump_event

log = logging.getLogger(__name__)


def error_response(status: int, event: ErrorEvent) -> web.Response:
    """One ``error`` event as a complete NDJSON response."""
    return web.Response(status=status, body=dump_event(event), content_type=NDJSON)


class NdjsonApi(HttpFrontEnd):
    """The worker's own chat API (the wire protocol of :mod:`model_worker.wire.protocol`)."""

    name = "ndjson"

    def __init__(self, *, metrics: WorkerMetrics, max_body_bytes: int, loading_progress: Callable[[], str]) -> None:
        super().__init__(metrics=metrics, loading_progress=loading_progress)
        self._max_body_bytes = max_body_bytes

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/chat", self.chat), web.delete("/v1/requests/{request_id}", self.cancel)]

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """Validate a chat request, queue it, and stream its events until ``done``/``error``."""
        try:
            self.check_room()
            ticket = self.submit(await self._read_request(request))
        except Rejected as rejected:
            return self.refusal_response(self.refused(rejected), rejected)
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        try:
            await response.prepare(request)
            async for event in self.events_until_done(ticket):
                await response.write(dump_event(event))
        except ConnectionResetError:
            log.info("client of request %s went away", ticket.request_id)
        return response

    def refusal_response(self, status: int, rejected: Rejected) -> web.Response:
        return error_response(status, rejected.event)

    async def cancel(self, request: web.Request) -> web.Response:
        """Cancel a waiting or running request; 404 when there is none with that id."""
        request_id = request.match_info["request_id"]
        found = self.scheduler is not None and self.scheduler.cancel(request_id)
        if found:
            log.info("request %s cancelled by its client", request_id)
        return web.json_response({"cancelled": found}, status=200 if found else 404)

    async def _read_request(self, request: web.Request) -> ChatRequest:
        body = await read_body(request, max_bytes=self._max_body_bytes)
        return await asyncio.to_thread(validated, ChatRequest, body)  # a body of images takes a while to parse
