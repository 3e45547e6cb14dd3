"""The OpenAI-compatible front end: ``POST /v1/chat/completions`` and ``GET /v1/models``, so that any
chat client or SDK that speaks OpenAI's protocol can use the model, batched with the bot's own traffic.

It only translates: the request into a :class:`ChatRequest` (:mod:`model_worker.serve.openai_request`),
the scheduler's events into a ``chat.completion`` or a stream of chunks, refusals into OpenAI's error
shape. Fairness between clients is keyed by the request's ``user`` field, or else by a hash of its API
key (never the key itself).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable

from aiohttp import web

from model_worker.scheduling.metrics import WorkerMetrics
from model_worker.scheduling.ticket import Rejected, Ticket
from model_worker.serve.front_end import HttpFrontEnd, Malformed, Refusal, error_status, read_body
from model_worker.serve.openai_answer import AnswerReader
from model_worker.serve.openai_replies import (
    SSE_DONE,
    Completion,
    error_body,
    model_entry,
    model_list,
    sse_event,
)
from model_worker.serve.openai_request import (
    MODEL_ID,
    CompletionRequest,
    fairness_key,
    parse_completion_request,
    remote_image_urls,
    to_chat_request,
)
from model_worker.serve.remote_images import RemoteImageFetcher
from model_worker.wire.protocol import ChatRequest, ErrorCode, ErrorEvent

log = logging.getLogger(__name__)

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class ModelNotFound(Refusal):
    """A request naming a model this worker does not serve (HTTP 404)."""

    status = 404

    def __init__(self, model: str) -> None:
        super().__init__(ErrorEvent(code=ErrorCode.BAD_REQUEST,
                                    message=f"the model {model!r} does not exist; this worker serves {MODEL_ID}"))


class OpenAiApi(HttpFrontEnd):
    """Chat completions (whole or streamed as server-sent events) over the shared scheduler."""

    name = "openai"

    def __init__(self, *, metrics: WorkerMetrics, max_body_bytes: int, loading_progress: Callable[[], str],
                 remote_images: RemoteImageFetcher | None = None) -> None:
        super().__init__(metrics=metrics, loading_progress=loading_progress)
        self._max_body_bytes = max_body_bytes
        self._remote_images = remote_images  # None: remote image URLs are refused
        self._created = int(time.time())

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/chat/completions", self.chat_completions), web.get("/v1/models", self.models),
                web.get("/v1/models/{model:.+}", self.model)]

    async def close(self) -> None:
        if self._remote_images is not None:
            await self._remote_images.close()

    async def models(self, request: web.Request) -> web.Response:
        """The one model this worker serves."""
        return web.json_response(model_list(MODEL_ID, created=self._created))

    async def model(self, request: web.Request) -> web.Response:
        """One model by id; 404 ``model_not_found`` for any other."""
        name = request.match_info["model"]
        if name != MODEL_ID:
            refusal = ModelNotFound(name)
            return self.refusal_response(self.refused(refusal), refusal)
        return web.json_response(model_entry(MODEL_ID, created=self._created))

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """Answer one chat completion: a ``chat.completion`` object, or with ``stream`` its chunks."""
        try:
            self.check_room()
            body = await read_body(request, max_bytes=self._max_body_bytes)
            completion_request = await asyncio.to_thread(parse_completion_request, body)  # images: large
            ticket = self.submit(await self._chat_request(completion_request, request))
        except Rejected as rejected:
            return self.refusal_response(self.refused(rejected), rejected)
        completion = Completion(id=ticket.request_id, created=int(time.time()), model=MODEL_ID,
                                include_usage=completion_request.include_usage)
        answer = AnswerReader(self.events_until_done(ticket), stops=completion_request.stop_texts,
                              stop_generation=lambda: self.stop_generation(ticket))
        try:
            if completion_request.stream:
                return await self._stream(request, ticket, completion, answer)
            return await self._whole(completion, answer)
        finally:
            await answer.close()  # a request whose client left (or failed) before its end is cancelled

    def refusal_response(self, status: int, rejected: Rejected) -> web.Response:
        """A refusal in OpenAI's error shape, with ``Retry-After`` when the worker says when to retry."""
        event = rejected.event
        param = rejected.param if isinstance(rejected, Malformed) else None
        headers = {"Retry-After": str(math.ceil(event.retry_after))} if event.retry_after else None
        return web.json_response(error_body(status, event.message, code=event.code, param=param),
                                 status=status, headers=headers)

    async def _chat_request(self, completion_request: CompletionRequest, request: web.Request) -> ChatRequest:
        if completion_request.model != MODEL_ID:
            raise ModelNotFound(completion_request.model)
        urls = remote_image_urls(completion_request)
        downloaded = {}
        if urls and self._remote_images is not None:
            self.check_room()  # before any download
            downloaded = await self._remote_images.fetch_all(urls)
        user = fairness_key(completion_request.user, request.headers.get("Authorization", ""))
        return to_chat_request(completion_request, request_id=f"chatcmpl-{uuid.uuid4().hex}", user=user,
                               downloaded=downloaded)

    async def _whole(self, completion: Completion, answer: AnswerReader) -> web.Response:
        text = "".join([piece async for piece in answer.pieces()])
        if answer.error is not None:
            return self.refusal_response(error_status(answer.error), Rejected(answer.error))
        return web.json_response(completion.message(text, finish=answer.finish, usage=answer.usage))

    async def _stream(self, request: web.Request, ticket: Ticket, completion: Completion,
                      answer: AnswerReader) -> web.StreamResponse:
        error = await answer.wait_until_prepared()
        if error is not None:  # nothing sent yet: an HTTP error the SDKs raise as such
            return self.refusal_response(error_status(error), Rejected(error))
        response = web.StreamResponse(headers=_SSE_HEADERS)
        try:
            await response.prepare(request)
            await response.write(completion.chunk({"role": "assistant", "content": ""}))
            async for piece in answer.pieces():
                await response.write(completion.chunk({"content": piece}))
            await response.write(self._stream_end(completion, answer))
        except ConnectionResetError:
            log.info("client of chat completion %s went away", ticket.request_id)
        return response

    @staticmethod
    def _stream_end(completion: Completion, answer: AnswerReader) -> bytes:
        if answer.error is not None:
            event = answer.error
            return sse_event(error_body(error_status(event), event.message, code=event.code)) + SSE_DONE
        usage = completion.usage_chunk(answer.usage) if completion.include_usage else b""
        return completion.chunk({}, finish=answer.finish) + usage + SSE_DONE
