"""Images cross the queue once: a :class:`WorkerClient` wrapper that sends an image's bytes only the first time.

After the worker has received an image (its answer started), later requests carry ``{"sha256": hex}`` in its
place: the SHA-256 of the decoded image bytes, which is also how the worker keys its image cache. When the
worker no longer holds one (it restarted, or evicted it) it answers ``unknown_image`` before any token, naming
the hashes; the request is then sent again with their data, and the caller never sees the difference.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator

from bot.worker_client.base import UnknownImage, WorkerClient
from model_worker.wire.protocol import ChatRequest, DoneEvent, Event, ImageRef, ReadyInfo, TokenEvent, Turn

log = logging.getLogger(__name__)


class ImageRefClient:
    """:class:`~bot.worker_client.base.WorkerClient` that replaces images the worker holds by their hash.

    ``max_known`` bounds how many hashes are remembered (least recently used forgotten first)."""

    def __init__(self, inner: WorkerClient, *, max_known: int = 4096) -> None:
        self._inner = inner
        self._max_known = max_known
        self._known: OrderedDict[str, None] = OrderedDict()

    async def chat(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Stream the request's events; an ``unknown_image`` before any token is answered by resending."""
        data = await asyncio.to_thread(_image_data, request)  # decoding and hashing images: off the loop
        try:
            async for event in self._stream(self._with_refs(request, data), data):
                yield event
        except _ResendNeeded as resend:
            log.info("request %s: the worker lacks %d image(s); resending their data",
                     request.request_id, len(resend.hashes))
            self._forget(resend.hashes)
            async for event in self._stream(self._with_refs(request, data), data, retry=False):
                yield event

    async def _stream(self, request: ChatRequest, data: dict[str, ImageRef], *,
                      retry: bool = True) -> AsyncIterator[Event]:
        tokens_seen = False
        try:
            async for event in self._inner.chat(request):
                if isinstance(event, TokenEvent | DoneEvent) and not tokens_seen:
                    tokens_seen = True
                    self._remember(data)  # the worker has encoded them by now
                yield event
        except UnknownImage as exc:
            resendable = [h for h in exc.hashes if h in data]
            if not retry or tokens_seen or not resendable or len(resendable) < len(set(exc.hashes)):
                raise
            raise _ResendNeeded(resendable) from exc

    def _with_refs(self, request: ChatRequest, data: dict[str, ImageRef]) -> ChatRequest:
        """The request with every image whose hash the worker already received sent as a hash only."""
        if not any(key in self._known for key in data):
            return request
        by_identity = {id(ref): key for key, ref in data.items()}
        turns = []
        for turn in request.conversation:
            images = [ImageRef(sha256=_key_of(ref, by_identity)) if _key_of(ref, by_identity) in self._known
                      else ref for ref in turn.images]
            turns.append(turn if images == turn.images else Turn(role=turn.role, text=turn.text, images=images))
        return request.model_copy(update={"conversation": turns})

    def _remember(self, data: dict[str, ImageRef]) -> None:
        for key in data:
            self._known[key] = None
            self._known.move_to_end(key)
        while len(self._known) > self._max_known:
            self._known.popitem(last=False)

    def _forget(self, hashes: list[str]) -> None:
        for key in hashes:
            self._known.pop(key, None)

    async def cancel(self, request_id: str) -> None:
        """Ask the worker to stop a request."""
        await self._inner.cancel(request_id)

    async def ready(self) -> ReadyInfo:
        """The worker's readiness."""
        return await self._inner.ready()

    async def close(self) -> None:
        await self._inner.close()


class _ResendNeeded(Exception):
    def __init__(self, hashes: list[str]) -> None:
        super().__init__(f"resend {len(hashes)} image(s)")
        self.hashes = hashes


def image_sha256(ref: ImageRef) -> str | None:
    """The SHA-256 hex of an image's decoded bytes (its own hash for a hash reference; None when the data
    is not valid base64, which the worker will refuse as a bad image)."""
    if ref.sha256 is not None:
        return ref.sha256
    try:
        return hashlib.sha256(ref.decode()).hexdigest()
    except ValueError:
        return None


def _image_data(request: ChatRequest) -> dict[str, ImageRef]:
    """The request's images that carry data, by hash."""
    data: dict[str, ImageRef] = {}
    for turn in request.conversation:
        for ref in turn.images:
            key = image_sha256(ref) if ref.data is not None else None
            if key is not None:
                data.setdefault(key, ref)
    return data


def _key_of(ref: ImageRef, by_identity: dict[int, str]) -> str | None:
    if ref.sha256 is not None:
        return None  # already a reference: leave it as the caller sent it
    return by_identity.get(id(ref)) or image_sha256(ref)
