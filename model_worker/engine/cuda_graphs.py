"""Decode steps replayed as CUDA graphs: one capture per (rows, width) bucket, the eager step otherwise.

A decode step of a 3.8 B model launches hundreds of small kernels; at the batch sizes a GPU decodes, the
launches rather than the arithmetic bound a step. A CUDA graph records the whole step once and replays
it with one launch. Graphs need fixed shapes and fixed addresses, so:

- a step runs for a bucket: rows rounded up to a slot bucket (powers of two) and the attention width
  rounded up to :data:`WIDTH_BUCKET` columns; the extra rows are free or held slots (throw-away rows, see
  ``batch.py``) and the extra columns are masked out, so the answer is the eager step's;
- each bucket owns static token-id and position tensors that a step copies its inputs into before the
  replay; the mask is computed inside the graph from the positions, and the logits land in one output
  tensor that every graph shares;
- graphs read and write the static KV cache's tensors in place: when the cache grows (new tensors, a new
  ``generation``) every graph is dropped and captured again on its next use.

All graphs share one memory pool (they never run at the same time). The first step of a bucket captures
its graph (a warm-up run on a side stream, which already writes that step's keys and values, then the
capture, then the replay, which writes the same values again). A capture that fails is logged once and
the decoder stays eager from then on: a step never fails because of graphs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from model_worker.engine.batch import StepInputs
from model_worker.engine.decode_step import LeanDecoder
from model_worker.engine.kv_cache import StaticKVCache, round_up, slot_bucket

log = logging.getLogger(__name__)

#: Attention widths are rounded up to a multiple of this for a captured step.
WIDTH_BUCKET = 128


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    input_ids: torch.Tensor  # [rows, 1], copied into before each replay
    positions: torch.Tensor  # [rows]


class GraphedDecoder:
    """Wraps the eager :class:`LeanDecoder`: same calls, same results, one launch per step."""

    def __init__(self, eager: LeanDecoder, *, max_slots: int, max_positions: int) -> None:
        self.eager = eager
        self.enabled = True
        self.captures = 0  # graphs captured so far (recaptures after a cache growth included)
        self._max_slots, self._max_positions = max_slots, max_positions
        self._graphs: dict[tuple[int, int], _Captured] = {}
        self._generation: int | None = None
        self._pool: tuple[int, int] | None = None
        self._logits: torch.Tensor | None = None  # [max_slots, vocab], written by every replay

    def shape_for(self, rows: int, width: int) -> tuple[int, int]:
        """The bucket a step runs in (exact shapes once graphs are off)."""
        if not self.enabled:
            return rows, width
        return slot_bucket(rows, self._max_slots), min(round_up(width, WIDTH_BUCKET), self._max_positions)

    def __call__(self, step: StepInputs, cache: StaticKVCache) -> torch.Tensor:
        """Next-token logits ``[rows, vocab]`` (valid until the next step)."""
        if not self.enabled:
            return self.eager(step, cache)
        if cache.generation != self._generation:
            self._graphs.clear()  # they address tensors the cache no longer uses
            self._generation = cache.generation
        captured = self._graphs.get((step.rows, step.width))
        if captured is None:
            captured = self._capture(step, cache)
            if captured is None:
                return self.eager(step, cache)
        captured.input_ids.copy_(step.input_ids)
        captured.positions.copy_(step.positions)
        captured.graph.replay()
        return self._logits[:step.rows]

    def _capture(self, step: StepInputs, cache: StaticKVCache) -> _Captured | None:
        try:
            captured = self._record(step, cache)
        except Exception as exc:  # noqa: BLE001 - capture fails in many ways (unsupported op, memory); all mean "stay eager"
            log.warning("could not capture a decode step as a CUDA graph (%s: %s); decoding without graphs",
                        type(exc).__name__, exc)
            self.enabled = False
            self._graphs.clear()
            return None
        self._graphs[(step.rows, step.width)] = captured
        self.captures += 1
        return captured

    def _record(self, step: StepInputs, cache: StaticKVCache) -> _Captured:
        device = step.input_ids.device
        rows, width = step.rows, step.width
        captured = _Captured(graph=torch.cuda.CUDAGraph(), input_ids=step.input_ids.clone(),
                             positions=step.positions.clone())
        columns = torch.arange(width, device=device)

        def run() -> torch.Tensor:
            mask = (columns <= captured.positions.unsqueeze(1)).view(rows, 1, 1, width)
            inputs = StepInputs(input_ids=captured.input_ids, positions=captured.positions, mask=mask, width=width,
                                write_index=cache.write_index(rows, captured.positions))
            return self.eager(inputs, cache)

        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            warm = run()  # this step's real keys and values at their real columns; the replay rewrites them
        torch.cuda.current_stream(device).wait_stream(side)
        if self._logits is None:
            self._logits = warm.new_empty(self._max_slots, warm.shape[-1])
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(captured.graph, pool=self._pool, capture_error_mode="thread_local"):
            self._logits[:rows].copy_(run())
        return captured
