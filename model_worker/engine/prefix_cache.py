"""History reuse: the KV of finished sequences, found again by the longest common prefix of a new prompt.

A key is the exact list of what fills each position: a token id, or ``(image sha256, query index)`` for an
image's query embeddings. Two prompts that agree on their first ``n`` items have the same KV on their first
``n`` positions (attention is causal), so a follow-up turn only prefills what differs. Entries are bounded
by their total positions and evicted least recently used first; an entry that is a prefix of a newer one
is dropped as redundant.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from model_worker.engine.kv_cache import KV, crop_kv

Items = tuple[Hashable, ...]


def common_prefix_length(a: Items, b: Items) -> int:
    """How many leading items ``a`` and ``b`` share (binary search over C-speed slice comparisons)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


class PrefixCache:
    """LRU store of ``items -> KV [1, heads, len(items), head_dim]`` within ``max_tokens`` positions."""

    def __init__(self, *, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._entries: OrderedDict[Items, KV] = OrderedDict()
        self._tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def tokens(self) -> int:
        return self._tokens

    def lookup(self, items: Items, *, limit: int) -> tuple[int, KV | None]:
        """The longest cached prefix of ``items`` (at most ``limit`` positions) and its KV, or ``(0, None)``."""
        best_key, best = None, 0
        for key in self._entries:
            length = common_prefix_length(key, items)
            if length > best:
                best_key, best = key, length
        best = min(best, limit)
        if best_key is None or best <= 0:
            return 0, None
        self._entries.move_to_end(best_key)
        return best, crop_kv(self._entries[best_key], best)

    def store(self, items: Items, kv: KV) -> None:
        """Keep a sequence's KV under its items, dropping entries it extends and the least recently used."""
        if not items or len(items) > self.max_tokens:
            return
        for key in [k for k in self._entries if len(k) <= len(items) and items[:len(k)] == k]:
            self._remove(key)
        self._entries[items] = kv
        self._tokens += len(items)
        while self._tokens > self.max_tokens:
            self._remove(next(iter(self._entries)))

    def _remove(self, key: Items) -> None:
        del self._entries[key]
        self._tokens -= len(key)
