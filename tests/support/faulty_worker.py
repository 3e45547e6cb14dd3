"""``python -m tests.support.faulty_worker serve ...``: the real worker process, whose engine misbehaves on
marked requests, as a stuck GPU call or a crash would.

- ``MINIGPT4_TEST_HANG_ON=TEXT``: a decode step of a request whose last user text contains TEXT never returns
  (the engine thread is stuck; the event loop, ``/healthz`` and the watchdog keep running);
- ``MINIGPT4_TEST_CRASH_ON=TEXT``: the process exits at once (status 70) when it prefills such a request.

Everything else (HTTP API, Redis consumer, scheduler, watchdog, the tiny model) is the real code.
"""

from __future__ import annotations

import os
import sys
import threading

import model_worker.serve.process as process
from model_worker.__main__ import main
from model_worker.engine.sequence import Sequence

HANG_ON = os.environ.get("MINIGPT4_TEST_HANG_ON")
CRASH_ON = os.environ.get("MINIGPT4_TEST_CRASH_ON")


def _marked(seqs: list[Sequence], mark: str | None) -> bool:
    return mark is not None and any(mark in seq.request.conversation[-1].text for seq in seqs)


class FaultyEngine:
    """The loaded engine, with faults on marked requests."""

    def __init__(self, engine: object) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> object:
        return getattr(self._engine, name)

    def prefill(self, seqs: list[Sequence]) -> None:
        if _marked(seqs, CRASH_ON):
            os._exit(70)
        self._engine.prefill(seqs)

    def decode(self, seqs: list[Sequence]) -> None:
        if _marked(seqs, HANG_ON):
            threading.Event().wait()
        self._engine.decode(seqs)


_load_real_engine = process._load_engine


def _load_faulty_engine(config, progress):
    engine, plan = _load_real_engine(config, progress)
    return FaultyEngine(engine), plan


process._load_engine = _load_faulty_engine

if __name__ == "__main__":
    sys.exit(main())
