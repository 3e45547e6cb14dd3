"""Fixtures for the scale-out tests: real ``redis-server`` processes and real queue workers."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bot.worker_client.redis_queue import RedisWorkerClient
from tests.support.redis_server import RedisServer, run_redis_server
from tests.support.worker import WorkerHandle, run_worker

#: A worker silent this long loses its job to another (short, so the takeover test is quick).
CLAIM_IDLE_MS = 3000


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private ``redis-server`` on a free loopback port (skips when it is not installed)."""
    with run_redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@dataclass
class QueueCluster:
    """One password-protected Redis and two ``serve --queue`` worker processes on tiny weights."""

    redis: RedisServer
    weights: Path
    workdir: Path
    stack: contextlib.ExitStack
    workers: list[WorkerHandle] = field(default_factory=list)

    def client(self, **options: object) -> RedisWorkerClient:
        """A new bot-side client on the shared queue (close it when done)."""
        return RedisWorkerClient(self.redis.url, **options)

    def start_worker(self, index: int) -> WorkerHandle:
        """Start worker ``index`` (again, after it was killed) and wait until it is ready."""
        handle = self.stack.enter_context(run_worker(
            self.weights, self.workdir / f"worker-{index}-{len(self.workers)}", queue=self.redis.url,
            claim_idle_ms=CLAIM_IDLE_MS, max_batch_size=4, consumer_name=f"worker-{index}",
            shutdown_grace=2))
        if index < len(self.workers):
            self.workers[index] = handle
        else:
            self.workers.append(handle)
        return handle

    def jobs_pulled(self) -> list[float]:
        """Each worker's count of jobs taken from the queue, from its /metrics."""
        return [_metric(handle, "worker_queue_jobs_pulled_total") for handle in self.workers]


def _metric(handle: WorkerHandle, name: str) -> float:
    status, body = handle.get("/metrics")
    assert status == 200
    found = re.search(rf"^{name} ([0-9.e+]+)$", body.decode(), re.MULTILINE)
    assert found, f"{name} missing from /metrics"
    return float(found.group(1))


@pytest.fixture(scope="session")
def queue_cluster(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueueCluster]:
    """Shared by the scale-out tests; a test that kills a worker starts it again before it ends."""
    workdir = tmp_path_factory.mktemp("queue-cluster")
    with run_redis_server(workdir, password="test-only-password") as redis, contextlib.ExitStack() as stack:
        cluster = QueueCluster(redis=redis, weights=tiny_weights, workdir=workdir, stack=stack)
        for index in range(2):
            cluster.start_worker(index)
        yield cluster
