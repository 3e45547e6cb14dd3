"""A small deterministic engine (plain Python, no model) that follows the scheduler's Engine protocol
(``model_worker/engine/sequence.py``): it "generates" the last user text one character per step, so every
expectation is computable."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from model_worker.engine.sequence import EngineError, Sequence
from model_worker.wire.protocol import ChatRequest, ErrorCode, FinishReason


class EchoEngine:
    """Echoes the last user text, one character per step; ``!`` in the text makes decode fail, and a text
    starting with ``wait`` is prepared only once :attr:`gate` opens (at most 10 s)."""

    def __init__(self, max_batch_size: int = 4, step_s: float = 0.0) -> None:
        self.max_batch_size = max_batch_size
        self.step_s = step_s
        self.gate = threading.Event()
        self.gate_timed_out = False
        self.batches: list[int] = []
        self.released: list[str] = []
        self.threads: dict[str, set[str]] = defaultdict(set)  # engine call -> names of the threads it ran on

    def _record_thread(self, call: str) -> None:
        self.threads[call].add(threading.current_thread().name)

    def prepare(self, request: ChatRequest) -> Sequence:
        self._record_thread("prepare")
        turn = request.conversation[-1]
        if turn.text.startswith("wait"):
            self.gate_timed_out = not self.gate.wait(10)
        for image in turn.images:
            try:
                image.decode()
            except ValueError as exc:
                raise EngineError(ErrorCode.BAD_IMAGE, str(exc)) from None
        return Sequence(request=request, prompt_tokens=len(turn.text), state=turn.text)

    def prefill(self, seqs: list[Sequence]) -> None:
        self._record_thread("prefill")
        self._advance(seqs)

    def decode(self, seqs: list[Sequence]) -> None:
        self._record_thread("decode")
        self.batches.append(len(seqs))
        if any("!" in seq.state for seq in seqs):
            raise RuntimeError("simulated device failure")
        time.sleep(self.step_s)
        self._advance(seqs)

    def release(self, seq: Sequence) -> None:
        self._record_thread("release")
        self.released.append(seq.request_id)

    @staticmethod
    def _advance(seqs: list[Sequence]) -> None:
        for seq in seqs:
            source: str = seq.state
            seq.output_ids.append(len(seq.output_ids))
            seq.text = source[:len(seq.output_ids)]
            if len(seq.output_ids) >= min(seq.request.generation.max_new_tokens, len(source)):
                full = len(seq.output_ids) >= len(source)
                seq.finish_reason = FinishReason.STOP if full else FinishReason.LENGTH
