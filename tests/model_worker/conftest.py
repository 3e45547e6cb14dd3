"""Fixtures for the worker's tests: the tiny model loaded once through the real loader, and schedulers on
their own engine thread, shut down after the test."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from model_worker.scheduling.metrics import WorkerMetrics
from model_worker.scheduling.scheduler import Scheduler, SchedulerLimits


@pytest.fixture(scope="session")
def loaded(tiny_weights: Path):
    """The tiny model loaded through the real loader on CPU (float32)."""
    from model_worker.model.loader import load_model

    torch.set_num_threads(1)  # tiny matmuls: threads only add contention on a shared machine
    return load_model(tiny_weights, device="cpu", use_cache=False)


@pytest.fixture(scope="session")
def wide_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """make-tiny at scale 2: LLM hidden 128 and MLP 512, multiples of int4's group of 128."""
    from model_worker.model.tiny import make_tiny

    out = tmp_path_factory.mktemp("tiny-scale2")
    make_tiny(out, seed=0, scale=2)
    return out


@pytest.fixture
def make_engine(loaded) -> Callable:
    """A new engine (empty caches) on the shared model; keyword arguments are ``EngineOptions``."""
    from model_worker.engine.engine import MiniGPT4Engine
    from model_worker.engine.options import EngineOptions

    def make(max_batch_size: int = 8, **options: object) -> MiniGPT4Engine:
        return MiniGPT4Engine(loaded, options=EngineOptions(max_batch_size=max_batch_size, **options))

    return make


@pytest.fixture
async def make_scheduler():
    """``make(engine, **limits)``: a started scheduler over ``engine`` (an echo engine, the tiny model's)."""
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
