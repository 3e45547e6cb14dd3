"""The running batch: every decoding sequence in its own slot of one static KV cache, one forward per step.

A sequence is prefilled on its own and joins with its own KV, copied once into the lowest free slot; it
leaves by freeing the slot (its KV is copied out only when the prefix cache wants it). A step feeds the
slots ``0..rows-1`` (up to the highest slot that advances): each row writes its new key and value at its
own next column and attends only to its own columns (a boolean mask) at its own rotary position, so
every sequence gets the result it would get alone (transformers' ``generate`` does the same for a padded
batch). A slot in that range that does not advance (free, or a sequence the scheduler holds back)
computes a throw-away row: it writes at that slot's next free column, which its sequence overwrites when
it advances again before anything reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from model_worker.engine.kv_cache import KV, StaticKVCache, kv_length
from model_worker.engine.sequence import Sequence


@dataclass(frozen=True)
class StepInputs:
    """One decode step over the slots ``0..rows-1``."""

    input_ids: torch.Tensor  # [rows, 1] each row's newest token (0 for a row that does not advance)
    positions: torch.Tensor  # [rows] each row's rotary position, which is also the column it writes
    write_index: torch.Tensor  # where the rows' new keys and values go (StaticKVCache.write_index)
    mask: torch.Tensor | None  # [rows, 1, 1, width] bool, column c visible to row r iff c <= positions[r]
    width: int  # columns attention reads

    @property
    def rows(self) -> int:
        return self.input_ids.shape[0]


class Decoder(Protocol):
    """One decode step: writes each row's new KV into the cache and returns next-token logits
    ``[rows, vocab]``."""

    def shape_for(self, rows: int, width: int) -> tuple[int, int]:
        """The (rows, width) this decoder runs for a step that needs ``rows`` and ``width`` (at least)."""

    def __call__(self, step: StepInputs, cache: StaticKVCache) -> torch.Tensor: ...


class DecodeBatch:
    """The sequences decoding together, their slots and lengths in the static KV cache."""

    def __init__(self, cache: StaticKVCache) -> None:
        self.cache = cache
        self._slots: list[Sequence | None] = [None] * cache.max_slots
        self._lengths = [0] * cache.max_slots  # positions held per slot
        self._slot_of: dict[Sequence, int] = {}

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, seq: object) -> bool:
        return seq in self._slot_of

    @property
    def rows(self) -> list[Sequence]:
        """The sequences in the batch, in slot order."""
        return [seq for seq in self._slots if seq is not None]

    @property
    def free(self) -> int:
        """Slots no sequence holds."""
        return len(self._slots) - len(self._slot_of)

    def length(self, seq: Sequence) -> int:
        """Positions of KV the sequence holds."""
        return self._lengths[self._slot_of[seq]]

    def join(self, entries: list[tuple[Sequence, KV]]) -> None:
        """Add sequences with their own KV ``[1, heads, length, head_dim]`` (copied into free slots)."""
        for seq, kv in entries:
            if not self.free:
                raise RuntimeError("no free slot in the decode batch")
            slot = self._slots.index(None)
            length = kv_length(kv)
            self.cache.reserve(slot + 1, length + 1)
            self.cache.load(slot, kv)
            self._slots[slot], self._lengths[slot] = seq, length
            self._slot_of[seq] = slot

    def leave(self, seq: Sequence, *, keep_kv: bool = False) -> KV | None:
        """Free a sequence's slot; returns a copy of its own KV when ``keep_kv``."""
        slot = self._slot_of.pop(seq)
        own = self.cache.read(slot, self._lengths[slot]) if keep_kv else None
        self._slots[slot], self._lengths[slot] = None, 0
        return own

    def step(self, decoder: Decoder, seqs: list[Sequence], tokens: list[int]) -> torch.Tensor:
        """Feed each of ``seqs`` (all in the batch) its next token; returns their logits ``[len(seqs), vocab]``
        in the order given."""
        slots = [self._slot_of[seq] for seq in seqs]
        rows, width = decoder.shape_for(max(slots) + 1, max(self._lengths[s] for s in slots) + 1)
        self.cache.reserve(rows, max(width, max(self._lengths[:rows]) + 1))
        logits = decoder(self._inputs(slots, tokens, rows, width), self.cache)
        for slot in slots:
            self._lengths[slot] += 1
        if slots == list(range(len(slots))):
            return logits[:len(slots)]
        return logits[torch.tensor(slots, device=logits.device)]

    def _inputs(self, slots: list[int], tokens: list[int], rows: int, width: int) -> StepInputs:
        device = self.cache.device
        ids = [0] * rows
        for slot, token in zip(slots, tokens, strict=True):
            ids[slot] = token
        positions = self._lengths[:rows]
        positions_t = torch.tensor(positions, device=device)
        every_row_alike = len(slots) == rows and len(set(positions)) == 1 and width == positions[0] + 1
        mask = None if every_row_alike else (
            torch.arange(width, device=device) <= positions_t.unsqueeze(1)).view(rows, 1, 1, width)
        return StepInputs(input_ids=torch.tensor(ids, device=device).unsqueeze(1), positions=positions_t,
                          write_index=self.cache.write_index(rows, positions_t), mask=mask, width=width)
