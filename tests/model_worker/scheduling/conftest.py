"""Fixtures for the scheduler tests: schedulers on their own engine thread, shut down after the test."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from model_worker.scheduling.metrics import WorkerMetrics
from model_worker.scheduling.scheduler import Scheduler, SchedulerLimits


@pytest.fixture
async def make_scheduler():
    created: list[tuple[Scheduler, ThreadPoolExecutor]] = []

    def make(engine, **limits) -> Scheduler:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        scheduler = Scheduler(engine, executor=executor, metrics=WorkerMetrics(),
                              limits=SchedulerLimits(**limits))
        scheduler.start()
        created.append((scheduler, executor))
        return scheduler

    yield make
    for scheduler, executor in created:
        await scheduler.shutdown(grace_s=0)
        executor.shutdown()
