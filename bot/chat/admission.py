"""A bot-wide bound on answers being prepared or in flight, checked before any download or decode.

Per-user limits (:mod:`bot.chat.limits`) keep one person from hogging the bot; this bound keeps a crowd from
exhausting it: past it every new question is told "busy, try again" at once, before its images are fetched,
decoded and held in memory. The bound is the worker's own capacity (running plus waiting, from its
readiness), refreshed every minute or so in the background; until the worker has said, the protocol's
default queue size.
"""

from __future__ import annotations

import asyncio
import logging
import time

from bot.worker_client.base import WorkerClient, WorkerError
from model_worker.wire.protocol import DEFAULT_MAX_QUEUE

log = logging.getLogger(__name__)

REFRESH_EVERY_S = 60.0
_RETRY_AFTER_FAILURE_S = 5.0


class AnswerSlots:
    """Counts answers in progress against the worker's capacity."""

    def __init__(self, worker: WorkerClient, *, limit: int = DEFAULT_MAX_QUEUE,
                 refresh_every_s: float = REFRESH_EVERY_S) -> None:
        self._worker = worker
        self.limit = limit
        self.in_progress = 0
        self._refresh_every_s = refresh_every_s
        self._refreshed_at: float | None = None
        self._refreshing: asyncio.Task[None] | None = None

    def try_take(self) -> bool:
        """Take a slot for a new answer; False when the bot is at its bound (the caller says busy)."""
        self._refresh_in_background()
        if self.in_progress >= self.limit:
            return False
        self.in_progress += 1
        return True

    def give_back(self) -> None:
        self.in_progress -= 1

    def _refresh_in_background(self) -> None:
        stale = self._refreshed_at is None or time.monotonic() - self._refreshed_at > self._refresh_every_s
        if stale and (self._refreshing is None or self._refreshing.done()):
            self._refreshed_at = time.monotonic()
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        try:
            capacity = (await self._worker.ready()).capacity
        except WorkerError as exc:  # keep the last bound; try again a little later
            log.info("could not read the worker's capacity (%s)", exc.code)
            self._refreshed_at = time.monotonic() - self._refresh_every_s + _RETRY_AFTER_FAILURE_S
            return
        if capacity and capacity != self.limit:
            log.info("answers in progress are bounded by the worker's capacity: %d", capacity)
            self.limit = capacity
