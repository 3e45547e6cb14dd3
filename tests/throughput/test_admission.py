"""The tokens-in-flight limit: the scheduler admits no request that would push the running prompts plus their
``max_new_tokens`` past it (a request always runs when nothing else does)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from model_worker.scheduling.metrics import WorkerMetrics
from model_worker.scheduling.scheduler import Scheduler, SchedulerLimits
from model_worker.wire.protocol import ChatRequest, DoneEvent


def request(index: int) -> ChatRequest:
    return ChatRequest(user=f"user-{index}", conversation=[{"role": "user", "text": f"question {index}"}],
                       generation={"greedy": True, "max_new_tokens": 8})


async def collect(ticket) -> list:
    return [event async for event in ticket.events()]


async def run_four(engine, limits: SchedulerLimits) -> tuple[list[DoneEvent], int]:
    executor = ThreadPoolExecutor(max_workers=1)
    scheduler = Scheduler(engine, executor=executor, metrics=WorkerMetrics(), limits=limits)
    scheduler.start()
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
    await scheduler.shutdown(grace_s=1)
    executor.shutdown()
    return [e[-1] for e in events], most_running


async def test_a_small_tokens_in_flight_limit_runs_requests_one_by_one(make_engine):
    unlimited, together = await run_four(make_engine(), SchedulerLimits())
    limited, alone = await run_four(make_engine(), SchedulerLimits(max_tokens_in_flight=30))
    assert together > 1 and alone == 1  # each request reserves its prompt (~10) + 8 new tokens
    assert all(isinstance(done, DoneEvent) for done in limited)
    assert [d.text for d in limited] == [d.text for d in unlimited]
