"""Attachment downloads, the same for every platform: to the end, in chunks, capped in size and time.

Bodies arrive over the network in many reads; aiohttp's ``read(n)`` returns whatever is buffered, so the
body is read chunk by chunk until the end. The download stops as soon as it passes the size cap (a
declared ``Content-Length`` over the cap stops it before any byte is read), and the whole download has a
time limit. Each failure is an :class:`~bot.chat.messages.AttachmentError` that the chat service turns
into a notice about that one attachment; the message itself is still answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from bot.chat.messages import AttachmentAccessError, AttachmentFetchError, AttachmentTooLarge

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 30.0
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Downloaded:
    data: bytes
    content_type: str | None


@dataclass(frozen=True)
class Downloader:
    """Downloads attachments through one shared session, each within ``max_bytes`` and ``timeout_s``."""

    session: aiohttp.ClientSession
    max_bytes: int
    timeout_s: float = DOWNLOAD_TIMEOUT_S

    async def fetch(self, url: str, *, name: str, headers: Mapping[str, str] | None = None) -> Downloaded:
        """The body at ``url``; raises :class:`AttachmentAccessError` (not 200), :class:`AttachmentTooLarge`
        or :class:`AttachmentFetchError` (network error or time limit)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._read(url, name, headers)
        except TimeoutError as exc:
            log.warning("download of %s took longer than %.0f s; given up", name, self.timeout_s)
            raise AttachmentFetchError(f"{name}: no complete answer within {self.timeout_s} s") from exc
        except aiohttp.ClientError as exc:
            log.warning("download of %s failed: %s", name, type(exc).__name__)
            raise AttachmentFetchError(f"{name}: {type(exc).__name__}") from exc

    async def _read(self, url: str, name: str, headers: Mapping[str, str] | None) -> Downloaded:
        async with self.session.get(url, headers=headers) as response:
            if response.status != 200:
                log.warning("download of %s: HTTP %s", name, response.status)
                raise AttachmentAccessError(f"{name}: HTTP {response.status}")
            if response.content_length is not None and response.content_length > self.max_bytes:
                raise AttachmentTooLarge(f"{name}: {response.content_length} bytes declared")
            body = bytearray()
            async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                body += chunk
                if len(body) > self.max_bytes:  # leaving the block drops the connection: nothing more is read
                    raise AttachmentTooLarge(f"{name}: more than {self.max_bytes} bytes")
            return Downloaded(bytes(body), response.content_type)
