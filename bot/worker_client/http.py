"""The worker client over HTTP: ``http://HOST:PORT`` or a local ``unix:/path/to/worker.sock``.

Connecting is retried with backoff (the worker may be restarting); a half-streamed answer is never
replayed: a stream that breaks raises :class:`WorkerUnavailable` at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp
from pydantic import ValidationError

from bot.worker_client.base import WorkerInternal, WorkerUnavailable, error_from_event
from model_worker.wire.protocol import (
    NDJSON,
    ChatRequest,
    DoneEvent,
    ErrorEvent,
    Event,
    HealthInfo,
    ReadyInfo,
    parse_event,
)

log = logging.getLogger(__name__)

_UNIX_PREFIX = "unix:"
_MAX_LINE_BYTES = 2**20  # one NDJSON event; a done event carries the whole reply
#: Health and readiness probes and cancels: a worker that takes longer than this to answer counts as not
#: answering.
_PROBE_TIMEOUT = aiohttp.ClientTimeout(total=5.0)


class HttpWorkerClient:
    """:class:`~bot.worker_client.base.WorkerClient` for a worker's HTTP API."""

    def __init__(self, url: str, *, token: str | None = None, connect_timeout: float = 5.0,
                 connect_attempts: int = 3, backoff_s: float = 0.25) -> None:
        self.url = url
        self._unix_path, self._base_url = _split_url(url)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._connect_timeout = connect_timeout
        self._connect_attempts = max(1, connect_attempts)
        self._backoff_s = backoff_s
        self._session: aiohttp.ClientSession | None = None

    async def chat(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Stream one request's events; ``error`` events are raised as typed :class:`WorkerError`.

        Leaving the iteration early closes the connection, which cancels the request on the worker."""
        body = await asyncio.to_thread(request.model_dump_json, exclude_none=True)  # images: large
        headers = {**self._headers, "Content-Type": "application/json", "Accept": NDJSON}
        response = await self._send("POST", "/v1/chat", data=body, headers=headers)
        finished = False
        try:
            _check_response(response)
            async for event in _read_events(response, request.request_id):
                if isinstance(event, ErrorEvent):
                    finished = True
                    raise error_from_event(event)
                finished = isinstance(event, DoneEvent)
                yield event
                if finished:
                    return
            raise WorkerUnavailable("the worker stopped before the answer was complete")
        finally:
            # Closing an unfinished stream tells the worker to stop; a finished one keeps its connection.
            if finished:
                response.release()
            else:
                response.close()

    async def cancel(self, request_id: str) -> None:
        """Ask the worker to stop a request; a no-op when it already ended or the worker is gone."""
        try:
            response = await self._send("DELETE", f"/v1/requests/{quote(request_id, safe='')}",
                                        headers=self._headers, attempts=1, timeout=_PROBE_TIMEOUT)
        except WorkerUnavailable:
            log.warning("could not reach the worker to cancel request %s", request_id)
            return
        response.release()

    async def ready(self) -> ReadyInfo:
        """The worker's readiness: any 200 means ready, 503 means loading (with its progress); raises
        :class:`WorkerUnavailable` when the worker cannot be reached or answers anything else."""
        response = await self._send("GET", "/readyz", headers=self._headers, attempts=1, timeout=_PROBE_TIMEOUT)
        async with response:
            if response.status not in (200, 503):
                _check_response(response)
                raise WorkerUnavailable(f"the worker answered /readyz with HTTP {response.status}")
            try:
                return ReadyInfo.model_validate_json(await response.read())
            except (ValidationError, aiohttp.ClientError, TimeoutError):
                log.warning("the worker at %s answered /readyz (HTTP %d) with a body this bot cannot read; "
                            "expected JSON with 'ready' and 'protocol_version'", self.url, response.status)
                return ReadyInfo(ready=response.status == 200, progress="unreadable readiness answer")

    async def health(self) -> HealthInfo:
        """The worker's health: 200 healthy, 503 alive but stuck (with the reason); raises
        :class:`WorkerUnavailable` when it does not answer within a few seconds."""
        try:
            response = await self._send("GET", "/healthz", headers=self._headers, attempts=1,
                                        timeout=_PROBE_TIMEOUT)
            async with response:
                body = await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise WorkerUnavailable("the worker did not answer its health check") from exc
        try:
            return HealthInfo.model_validate_json(body)
        except ValidationError:
            return HealthInfo(healthy=response.status == 200, reason=f"HTTP {response.status}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- transport ----------------------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = (aiohttp.UnixConnector(path=self._unix_path) if self._unix_path
                         else aiohttp.TCPConnector())
            timeout = aiohttp.ClientTimeout(total=None, connect=self._connect_timeout)
            self._session = aiohttp.ClientSession(self._base_url, connector=connector, timeout=timeout,
                                                  read_bufsize=_MAX_LINE_BYTES)
        return self._session

    async def _send(self, method: str, path: str, *, attempts: int | None = None,
                    **kwargs: object) -> aiohttp.ClientResponse:
        """Send a request, retrying only failures to connect (the worker never saw those)."""
        attempts = attempts or self._connect_attempts
        for attempt in range(1, attempts + 1):
            try:
                return await self._get_session().request(method, path, **kwargs)
            except (TimeoutError, aiohttp.ClientConnectorError) as exc:
                if attempt == attempts:
                    raise WorkerUnavailable("the worker cannot be reached") from exc
                log.info("worker not reachable (%s); retrying", type(exc).__name__)
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
            except aiohttp.ClientError as exc:
                raise WorkerUnavailable("the worker cannot be reached") from exc
        raise AssertionError("unreachable")


def _split_url(url: str) -> tuple[str | None, str]:
    """(Unix socket path or None, base URL for requests)."""
    if url.startswith(_UNIX_PREFIX):
        path = url[len(_UNIX_PREFIX):]
        if not path:
            raise ValueError("a unix: worker URL needs a socket path, e.g. unix:/run/worker.sock")
        return path, "http://worker"
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"unsupported worker URL {url!r}: expected http://HOST:PORT or unix:/path")
    return None, url.rstrip("/")


def _check_response(response: aiohttp.ClientResponse) -> None:
    """Raise for answers that carry no protocol events (wrong token, a proxy's error page)."""
    if response.status == 401:
        raise WorkerInternal("the worker refused our bearer token (check WORKER_TOKEN on both sides)")
    if response.content_type != NDJSON and response.status != 200:
        raise WorkerUnavailable(f"the worker answered HTTP {response.status}")


async def _read_events(response: aiohttp.ClientResponse, request_id: str) -> AsyncIterator[Event]:
    try:
        async for line in response.content:
            if line.strip():
                yield _parse_line(line, request_id)
    # ValueError: a line longer than any event could be.
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ValueError) as exc:
        raise WorkerUnavailable("the connection to the worker broke while answering") from exc


def _parse_line(line: bytes, request_id: str) -> Event:
    try:
        return parse_event(line)
    except ValidationError as exc:
        log.error("request %s: the worker sent an event this bot does not understand", request_id)
        raise WorkerInternal("the worker sent an unreadable event") from exc
