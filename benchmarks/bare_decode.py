"""The bare batched decode: the worker's own engine in-process on the same conversations, with no server.

Turn by turn, the N conversations' requests are prepared, prefilled in one call and decoded together until
every one has finished: what the engine does when nothing gets in its way (no HTTP, no scheduler, no
streaming, no waiting for clients). The throughput benchmark divides the worker's rate by this one, which
is the serving layer's share; it also reports the rate of the decode steps alone.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.conversations import conversation_image, next_request
from model_worker.wire.protocol import Turn


@dataclass
class BareAnswer:
    """One reply of the bare run, timed like the worker's (from its turn's start)."""

    tokens: int
    ttft_s: float
    itl_s: float | None
    text: str


@dataclass
class BareRun:
    answers: list[BareAnswer]
    seconds: float  # wall time of every turn, prepare and prefill included
    decode_seconds: float  # the decode steps alone
    decoded_tokens: int  # tokens those steps produced (each answer's first comes from its prefill)


def engine_options(weights: Path, max_batch_size: int, serve_flags: list[str]):
    """The engine options a ``serve`` started with these flags uses (parsed by serve's own parser)."""
    from model_worker.commands.serve import add_arguments
    from model_worker.commands.throughput_flags import engine_options_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--weights", str(weights), "--max-batch-size", str(max_batch_size), *serve_flags])
    return engine_options_from_args(args)


def run_bare(engine, *, first: int, conversations: int, turns: int, max_new_tokens: int) -> BareRun:
    """Conversations ``first .. first + conversations - 1`` through ``engine``, all turns in lock-step."""
    histories: list[list[Turn]] = [[] for _ in range(conversations)]
    answers: list[list[BareAnswer]] = [[] for _ in range(conversations)]
    images = [conversation_image(first + i) for i in range(conversations)]
    decode_seconds, decoded_before = 0.0, engine.stats.decoded_tokens
    started = time.perf_counter()
    for turn in range(turns):
        requests = [next_request(first + i, images[i], histories[i], turn, max_new_tokens)
                    for i in range(conversations)]
        replies, seconds = _one_turn(engine, requests)
        decode_seconds += seconds
        for i, (request, answer) in enumerate(zip(requests, replies, strict=True)):
            answers[i].append(answer)
            histories[i] = [*request.conversation, Turn(role="assistant", text=answer.text)]
    return BareRun([a for run in answers for a in run], time.perf_counter() - started, decode_seconds,
                   engine.stats.decoded_tokens - decoded_before)


def _one_turn(engine, requests) -> tuple[list[BareAnswer], float]:
    started = time.perf_counter()
    seqs = [engine.prepare(request) for request in requests]
    engine.prefill(seqs)
    first = time.perf_counter()
    finished_at = {id(seq): first for seq in seqs if seq.finished}
    while len(finished_at) < len(seqs):
        engine.decode(seqs)
        now = time.perf_counter()
        finished_at.update({id(seq): now for seq in seqs if seq.finished and id(seq) not in finished_at})
    for seq in seqs:
        engine.release(seq)
    answers = [BareAnswer(tokens=len(seq.output_ids), ttft_s=first - started, text=seq.text,
                          itl_s=(finished_at[id(seq)] - first) / (len(seq.output_ids) - 1)
                          if len(seq.output_ids) > 1 else None) for seq in seqs]
    return answers, time.perf_counter() - first
