"""The decode batch's keys and values, preallocated per batch slot and written in place.

Per layer one keys and one values tensor ``[slots, heads, positions, head_dim]``. A sequence owns a slot
and holds its positions ``0..length-1`` there, left-aligned: a decode step writes each row's new key and
value at that row's own next column (``index_put_``) and attention reads a view of the first columns,
so a step neither copies nor allocates anything of the cache's size, and a row joins (its own KV copied
into its slot) or leaves (its slot simply freed) without touching the others.

The tensors grow on demand, positions to the next chunk or twice what they held (whichever is more) and
slots to a few fixed counts (see :func:`slot_bucket`), up to ``max_slots x max_positions``: a run never
holds much more than it uses (at the real shapes one position of one slot is 405 KB in bfloat16, so a
full batch of 8 rows of 128 positions is 0.4 GB), and a long conversation needs only a few growths. A
growth copies the cache once, one tensor at a time so that memory peaks at the old size plus one layer's
(rare: a few times in a worker's life, never once the cache has reached the sizes its traffic needs), and
bumps :attr:`StaticKVCache.generation`, which tells captured CUDA graphs that the tensors moved. Fresh
memory is zeroed: attention multiplies masked-out values by zero weights, which must not meet
uninitialised NaNs.
"""

from __future__ import annotations

import torch

#: Per layer (keys, values), each ``[rows, heads, length, head_dim]``.
KV = list[tuple[torch.Tensor, torch.Tensor]]

#: Positions are allocated in multiples of this.
POSITION_CHUNK = 64


def kv_length(kv: KV) -> int:
    """Positions a per-layer KV holds."""
    return kv[0][0].shape[2] if kv else 0


def crop_kv(kv: KV, length: int) -> KV:
    """The first ``length`` positions of every layer (views, no copy)."""
    return [(keys[:, :, :length], values[:, :, :length]) for keys, values in kv]


def slot_bucket(rows: int, max_slots: int) -> int:
    """The slot count ``rows`` is rounded up to: the next power of two, at most ``max_slots``."""
    bucket = 1
    while bucket < rows:
        bucket *= 2
    return min(bucket, max_slots)


def round_up(value: int, multiple: int) -> int:
    """``value`` rounded up to a multiple of ``multiple``."""
    return -(-value // multiple) * multiple


class StaticKVCache:
    """Preallocated, growable per-slot KV tensors for every layer of the language model."""

    def __init__(self, *, layers: int, heads: int, head_dim: int, max_slots: int, max_positions: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.layers, self.heads, self.head_dim = layers, heads, head_dim
        self.max_slots, self.max_positions = max_slots, max_positions
        self.dtype, self.device = dtype, device
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.slots = 0  # allocated slots
        self.positions = 0  # allocated positions per slot
        self.generation = 0  # bumped whenever the tensors are reallocated
        self._row_starts: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def bytes(self) -> int:
        """Memory the cache holds now."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def bytes_per_position(self) -> int:
        """Memory of one position of one slot (keys and values of every layer)."""
        return 2 * self.layers * self.heads * self.head_dim * self.dtype.itemsize

    def reserve(self, slots: int, positions: int) -> None:
        """Make room for at least ``slots`` slots of ``positions`` positions (grows, never shrinks).

        Raises ``ValueError`` beyond the cache's bounds."""
        if slots > self.max_slots or positions > self.max_positions:
            raise ValueError(f"the KV cache holds at most {self.max_slots} rows of {self.max_positions} "
                             f"positions; {slots} of {positions} were asked for")
        if slots <= self.slots and positions <= self.positions:
            return
        new_slots = max(self.slots, slot_bucket(slots, self.max_slots))
        wanted = max(round_up(positions, POSITION_CHUNK), 2 * self.positions if positions > self.positions else 0)
        new_positions = max(self.positions, min(wanted, self.max_positions))
        if not self.keys:
            self.keys, self.values = self._zeros(new_slots, new_positions), self._zeros(new_slots, new_positions)
        for tensors in (self.keys, self.values):
            for index in range(self.layers):  # one tensor at a time: the old one is freed before the next grows
                tensors[index] = self._grown(tensors[index], new_slots, new_positions)
        self.slots, self.positions = new_slots, new_positions
        self.generation += 1
        self._row_starts.clear()

    def _zeros(self, slots: int, positions: int) -> list[torch.Tensor]:
        shape = (slots, self.heads, positions, self.head_dim)
        return [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]

    def _grown(self, old: torch.Tensor, slots: int, positions: int) -> torch.Tensor:
        if old.shape[0] == slots and old.shape[2] == positions:
            return old
        new = old.new_zeros(slots, self.heads, positions, self.head_dim)
        new[:old.shape[0], :, :old.shape[2]] = old
        return new

    def load(self, slot: int, kv: KV) -> None:
        """Copy a sequence's own KV (``[1, heads, length, head_dim]`` per layer) into positions ``0..length-1``
        of ``slot`` (reserve the room first)."""
        for keys, values, (own_keys, own_values) in zip(self.keys, self.values, kv, strict=True):
            length = own_keys.shape[2]
            keys[slot, :, :length].copy_(own_keys[0])
            values[slot, :, :length].copy_(own_values[0])

    def read(self, slot: int, length: int) -> KV:
        """A copy of the first ``length`` positions of ``slot`` (the slot may then be reused)."""
        return [(keys[slot:slot + 1, :, :length].clone(), values[slot:slot + 1, :, :length].clone())
                for keys, values in zip(self.keys, self.values, strict=True)]

    def write_index(self, rows: int, columns: torch.Tensor) -> torch.Tensor:
        """Where slot ``r`` (of ``0..rows-1``) stores column ``columns[r]`` of each head: indices into a layer's
        keys viewed as ``[slots * heads * positions, head_dim]`` (``[rows * heads]``; valid until the cache grows)."""
        key = (rows, self.positions)
        if key not in self._row_starts:
            starts = torch.arange(rows * self.heads, device=self.device) * self.positions
            self._row_starts[key] = starts.view(rows, self.heads)
        return (self._row_starts[key] + columns.unsqueeze(1)).view(-1)

    def write(self, layer: int, index: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store one new position per row in place, at ``index`` from :meth:`write_index`; ``keys`` and
        ``values`` are ``[rows, heads, head_dim]``."""
        self.keys[layer].view(-1, self.head_dim).index_copy_(0, index, keys.reshape(-1, self.head_dim))
        self.values[layer].view(-1, self.head_dim).index_copy_(0, index, values.reshape(-1, self.head_dim))

    def window(self, layer: int, rows: int, width: int, *, first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the slots ``first..rows-1`` and the first ``width`` positions of one layer (no copy)."""
        return self.keys[layer][first:rows, :, :width], self.values[layer][first:rows, :, :width]
