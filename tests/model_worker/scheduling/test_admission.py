"""The tokens-in-flight limit: the scheduler admits no request that would push the running prompts plus their
``max_new_tokens`` past it (a request always runs when nothing else does)."""

from __future__ import annotations

import asyncio

from model_worker.scheduling.scheduler import Scheduler
from model_worker.wire.protocol import ChatRequest, DoneEvent
from tests.support.requests import collect, one_turn


def request(index: int) -> ChatRequest:
    return one_turn(f"question {index}", user=f"user-{index}", max_new_tokens=8)


async def run_four(scheduler: Scheduler) -> tuple[list[DoneEvent], int]:
    most_running = 0

    async def watch() -> None:
        nonlocal most_running
        while True:
            most_running = max(most_running, scheduler.running_count)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    tickets = [scheduler.submit(request(i)) for i in range(4)]
    events = await asyncio.gather(*(collect(ticket) for ticket in tickets))
    watcher.cancel()
    return [e[-1] for e in events], most_running


async def test_a_small_tokens_in_flight_limit_runs_requests_one_by_one(make_engine, make_scheduler):
    unlimited, together = await run_four(make_scheduler(make_engine()))
    limited, alone = await run_four(make_scheduler(make_engine(), max_tokens_in_flight=30))
    assert together > 1 and alone == 1  # each request reserves its prompt (~10) + 8 new tokens
    assert all(isinstance(done, DoneEvent) for done in limited)
    assert [d.text for d in limited] == [d.text for d in unlimited]
