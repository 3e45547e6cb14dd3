"""Image embeddings by content hash (SHA-256 of the image bytes): an image is encoded once, then reused.

Bounded by a number of entries and a number of bytes; the least recently used entry goes first. A lock
makes it safe to share between the thread that prepares requests (looks embeddings up) and the engine
thread (stores new ones).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import torch


def image_hash(data: bytes) -> str:
    """The hex SHA-256 of the image bytes (the same on the bot side)."""
    return hashlib.sha256(data).hexdigest()


class ImageEmbeddingCache:
    """LRU map ``sha256 -> projected embeddings [num_queries, hidden]`` within count and byte bounds."""

    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> torch.Tensor | None:
        """The embedding for a hash (now the most recently used), or None."""
        with self._lock:
            embedding = self._entries.get(key)
            if embedding is not None:
                self._entries.move_to_end(key)
            return embedding

    def put(self, key: str, embedding: torch.Tensor) -> None:
        """Keep an embedding, evicting the least recently used ones beyond the bounds."""
        size = _size(embedding)
        if size > self.max_bytes or self.max_entries <= 0:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= _size(old)
            self._entries[key] = embedding
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= _size(evicted)


def _size(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
