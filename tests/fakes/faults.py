"""Switchable misbehaviour shared by the fakes: which requests a fault hits, and hooks that run once."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class EveryNth:
    """Hits every ``every``-th matching request (every=3: the 3rd, 6th, 9th...), at most ``times`` times."""

    every: int
    times: int | None = None
    seen: int = 0
    hits: int = 0

    def hit(self) -> bool:
        self.seen += 1
        if self.seen % self.every or (self.times is not None and self.hits >= self.times):
            return False
        self.hits += 1
        return True


@dataclass
class OneShot:
    """An action to run once, as the fake answers the first request that matches."""

    method: str
    pattern: re.Pattern[str]
    action: Callable[[], Awaitable[None]]

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and bool(self.pattern.fullmatch(path))


@dataclass
class Hooks:
    """The pending one-shot actions of a fake; each runs in the background, so the answer that set it
    off goes out at once (the action strikes while the client carries on)."""

    pending: list[OneShot] = field(default_factory=list)
    running: set[asyncio.Task[None]] = field(default_factory=set)

    def add(self, method: str, pattern: str, action: Callable[[], Awaitable[None]]) -> None:
        self.pending.append(OneShot(method, re.compile(pattern), action))

    def run(self, method: str, path: str) -> None:
        """Start (and forget) the actions waiting for this request."""
        due = [hook for hook in self.pending if hook.matches(method, path)]
        self.pending = [hook for hook in self.pending if hook not in due]
        for hook in due:
            task = asyncio.get_running_loop().create_task(hook.action())
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def settle(self) -> None:
        """Wait for the actions started so far (their errors are raised here)."""
        await asyncio.gather(*self.running)

    async def cancel(self) -> None:
        for task in list(self.running):
            task.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)
