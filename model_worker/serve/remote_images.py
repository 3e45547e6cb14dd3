"""Remote ``http(s)`` image URLs in chat completions, fetched only where the operator allows it
(``serve --allow-remote-images``).

Each download has the bounds of the bot's own: at most ``DEFAULT_MAX_IMAGE_BYTES`` (stopped as soon as
the size passes it), at most ``IMAGE_DOWNLOAD_TIMEOUT_S`` seconds, and a declared type that is an image
(or says nothing specific); the engine then decodes the bytes like any other image. A request may name
at most :data:`MAX_REMOTE_IMAGES`. URLs are never logged whole (a signed URL carries a credential).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import aiohttp

from model_worker.serve.front_end import Malformed
from model_worker.wire.protocol import DEFAULT_MAX_IMAGE_BYTES, IMAGE_DOWNLOAD_TIMEOUT_S, ImageRef

log = logging.getLogger(__name__)

#: Remote images one request may name (the bot's default for one message).
MAX_REMOTE_IMAGES = 4
_CHUNK_BYTES = 64 * 1024
_GENERIC_TYPE = "application/octet-stream"


class RemoteImageFetcher:
    """Downloads the remote images of a request, within the size, type and time limits."""

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES, timeout_s: float = IMAGE_DOWNLOAD_TIMEOUT_S,
                 max_images: int = MAX_REMOTE_IMAGES) -> None:
        self._max_bytes = max_bytes
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_images = max_images
        self._session: aiohttp.ClientSession | None = None

    async def fetch_all(self, urls: list[str]) -> dict[str, ImageRef]:
        """Each URL's image, one download at a time; :class:`Malformed` (HTTP 400) for any that fails."""
        if len(urls) > self._max_images:
            raise Malformed(f"a request may name at most {self._max_images} remote images", param="messages")
        return {url: await self.fetch(url) for url in urls}

    async def fetch(self, url: str) -> ImageRef:
        """One image's bytes as an :class:`ImageRef`."""
        host = urlsplit(url).hostname or "?"
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(url) as response:
                data = await self._read_image(response, host)
        except TimeoutError:
            raise self._refusal(host, f"it did not arrive within {self._timeout.total:g} s") from None
        except aiohttp.ClientError as exc:
            raise self._refusal(host, f"it could not be fetched ({type(exc).__name__})") from None
        log.info("fetched a remote image from %s (%d bytes)", host, len(data))
        return ImageRef.from_bytes(data)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _read_image(self, response: aiohttp.ClientResponse, host: str) -> bytes:
        if response.status != 200:
            raise self._refusal(host, f"the server answered HTTP {response.status}")
        declared = response.content_type.lower()
        if not declared.startswith("image/") and declared != _GENERIC_TYPE:
            raise self._refusal(host, f"it is {declared}, not an image")
        if (response.content_length or 0) > self._max_bytes:
            raise self._refusal(host, self._too_large())
        chunks, size = [], 0
        async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
            size += len(chunk)
            if size > self._max_bytes:
                raise self._refusal(host, self._too_large())
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> str:
        return f"it is larger than {self._max_bytes / 1_000_000:g} MB"

    @staticmethod
    def _refusal(host: str, why: str) -> Malformed:
        log.info("refused a remote image from %s: %s", host, why)
        return Malformed(f"the image from {host} was not used: {why}", param="messages")
