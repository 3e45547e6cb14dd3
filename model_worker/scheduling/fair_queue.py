"""The waiting line: round-robin across users, first come first served within one user.

One user's burst of requests therefore cannot starve others: each user with something waiting gets a
turn before anyone gets a second one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Items grouped by a key (the user), served round-robin across keys."""

    def __init__(self, key: Callable[[T], str]) -> None:
        self._key = key
        # Insertion order of the dict is the rotation order: the first key is served next.
        self._by_key: dict[str, deque[T]] = {}

    def __len__(self) -> int:
        return sum(len(items) for items in self._by_key.values())

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def __iter__(self) -> Iterator[T]:
        """Items in the order :meth:`pop` will return them (if nothing else arrives)."""
        lines = [list(items) for items in self._by_key.values()]
        for depth in range(max((len(line) for line in lines), default=0)):
            for line in lines:
                if depth < len(line):
                    yield line[depth]

    def push(self, item: T) -> None:
        """Add an item at the end of its key's line; a new key joins the rotation last."""
        self._by_key.setdefault(self._key(item), deque()).append(item)

    def pop(self) -> T:
        """Take the next item: the oldest of the key whose turn it is; that key moves to the back."""
        key = next(iter(self._by_key))
        items = self._by_key.pop(key)
        item = items.popleft()
        if items:
            self._by_key[key] = items
        return item

    def remove(self, item: T) -> bool:
        """Take an item out of the line wherever it is; False when it is not waiting."""
        key = self._key(item)
        items = self._by_key.get(key)
        if items is None or item not in items:
            return False
        items.remove(item)
        if not items:
            del self._by_key[key]
        return True
