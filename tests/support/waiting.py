"""Waiting in tests for something that a fake or a log shows only by its state (it fires no event)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def eventually(condition: Callable[[], object], *, within: float = 20.0) -> None:
    """Return once ``condition()`` is true; raise ``TimeoutError`` after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polled state, there is no event to wait on
            await asyncio.sleep(0.05)
