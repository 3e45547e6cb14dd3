"""A small bounded cache whose entries expire, for what adapters look up on the platform per user."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ExpiringCache(Generic[K, V]):
    """At most ``capacity`` entries (least recently used dropped first), each kept for ``ttl_s``."""

    def __init__(self, *, ttl_s: float, capacity: int) -> None:
        self._ttl_s = ttl_s
        self._capacity = capacity
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    async def get_or_load(self, key: K, load: Callable[[K], Awaitable[V]]) -> V:
        """The cached value for ``key``, or ``await load(key)`` (then kept) when absent or expired."""
        cached = self._entries.get(key)
        if cached is not None and time.monotonic() - cached[0] < self._ttl_s:
            self._entries.move_to_end(key)
            return cached[1]
        value = await load(key)
        self._entries[key] = (time.monotonic(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
        return value
