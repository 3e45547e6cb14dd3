"""Several real ``serve --queue`` worker processes sharing one real, password-protected Redis."""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from bot.worker_client.redis_queue import RedisWorkerClient
from tests.support.redis_server import RedisServer
from tests.support.worker import WorkerHandle, run_worker

#: A worker silent this long loses its job to another (short, so the takeover test is quick).
CLAIM_IDLE_MS = 3000


@dataclass
class QueueCluster:
    """One password-protected Redis and two ``serve --queue`` worker processes on tiny weights."""

    redis: RedisServer
    weights: Path
    workdir: Path
    stack: contextlib.ExitStack
    workers: list[WorkerHandle] = field(default_factory=list)
    module: str = "model_worker"  # or tests.support.faulty_worker
    claim_idle_ms: int = CLAIM_IDLE_MS

    def client(self, **options: object) -> RedisWorkerClient:
        """A new bot-side client on the shared queue (close it when done)."""
        return RedisWorkerClient(self.redis.url, **options)

    def start_worker(self, index: int) -> WorkerHandle:
        """Start worker ``index`` (again, after it was killed) and wait until it is ready."""
        handle = self.stack.enter_context(run_worker(
            self.weights, self.workdir / f"worker-{index}-{len(self.workers)}", module=self.module,
            queue=self.redis.url, claim_idle_ms=self.claim_idle_ms, max_batch_size=4,
            consumer_name=f"worker-{index}", shutdown_grace=2))
        if index < len(self.workers):
            self.workers[index] = handle
        else:
            self.workers.append(handle)
        return handle

    async def keep_workers_running(self) -> None:
        """Restart every worker that exits, as a container's restart policy would (until cancelled)."""
        while True:
            for index, handle in enumerate(self.workers):
                if handle.process.poll() is not None:
                    with contextlib.suppress(RuntimeError):  # it died again before it was ready
                        await asyncio.to_thread(self.start_worker, index)
            await asyncio.sleep(0.2)

    def jobs_pulled(self) -> list[float]:
        """Each worker's count of jobs taken from the queue, from its /metrics."""
        return [_metric(handle, "worker_queue_jobs_pulled_total") for handle in self.workers]


def _metric(handle: WorkerHandle, name: str) -> float:
    status, body = handle.get("/metrics")
    assert status == 200
    found = re.search(rf"^{name} ([0-9.e+]+)$", body.decode(), re.MULTILINE)
    assert found, f"{name} missing from /metrics"
    return float(found.group(1))
