"""File bodies as real CDNs and file hosts send them: in pieces over time, and sometimes not to the end.

Shared by the fakes that serve files (Discord's CDN, Slack's file host). A :class:`Delivery` says how a
body goes out; each response is recorded as a :class:`SentBody` (how much left the fake, and whether it
reached the end), so a test can tell that a client stopped reading early.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

KIB = 1024


@dataclass(frozen=True)
class Delivery:
    """How a body is sent. The default is what a CDN does to a photo: many small reads, a little apart."""

    chunk_bytes: int = 16 * KIB
    pause_s: float = 0.002
    declare_length: bool = True  # False: chunked transfer encoding, no Content-Length up front
    break_after: int | None = None  # drop the connection after this many bytes (a network error)
    stall_after: int | None = None  # stop sending after this many bytes and hang (a stalled peer)

    @classmethod
    def spread_over(cls, size: int, seconds: float, *, chunk_bytes: int = 16 * KIB) -> Delivery:
        """``size`` bytes in ``chunk_bytes`` pieces, paced to take about ``seconds``."""
        chunks = max(1, -(-size // chunk_bytes))
        return cls(chunk_bytes=chunk_bytes, pause_s=seconds / chunks)


@dataclass
class SentBody:
    """One response body as the fake sent it."""

    path: str
    size: int
    sent: int = 0
    complete: bool = False


async def send_body(request: web.Request, data: bytes, content_type: str, delivery: Delivery,
                    record: SentBody) -> web.StreamResponse:
    """Send ``data`` as ``delivery`` says, counting into ``record``."""
    response = web.StreamResponse(headers={"Content-Type": content_type})
    if delivery.declare_length:
        response.content_length = len(data)
    else:
        response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        await _send_chunks(request, response, data, delivery, record)
    except ConnectionError:
        return response  # the client went away (it stopped reading, or gave up)
    return response


async def _send_chunks(request: web.Request, response: web.StreamResponse, data: bytes, delivery: Delivery,
                       record: SentBody) -> None:
    for start in range(0, len(data), delivery.chunk_bytes):
        if start and delivery.pause_s:
            await asyncio.sleep(delivery.pause_s)
        if delivery.break_after is not None and record.sent >= delivery.break_after:
            request.transport.abort()  # the connection drops mid-body
            return
        if delivery.stall_after is not None and record.sent >= delivery.stall_after:
            await _hang_until_client_leaves(request)
            return
        chunk = data[start:start + delivery.chunk_bytes]
        await response.write(chunk)
        record.sent += len(chunk)
    record.complete = True  # every byte is out (the client may close before the end-of-body marker)
    await response.write_eof()


async def _hang_until_client_leaves(request: web.Request) -> None:
    # aiohttp signals no event when the peer leaves (handlers are not cancelled): look now and then
    while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
