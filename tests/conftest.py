"""Shared fixtures: tiny random weights in the real file formats, a real worker process, real Redis servers
and a real cluster of queue workers (each started only when a test asks for it)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.queue_cluster import QueueCluster
from tests.support.redis_server import RedisServer, run_redis_server


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights directory written by ``make-tiny`` (the four artefacts plus arch.json)."""
    from model_worker.model.tiny import make_tiny

    out = tmp_path_factory.mktemp("tiny-weights")
    make_tiny(out, seed=0)
    return out


@pytest.fixture(scope="session")
def worker(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real ``python -m model_worker serve`` process on the tiny weights, shared by the session."""
    from tests.support.worker import run_worker

    with run_worker(tiny_weights, tmp_path_factory.mktemp("worker")) as handle:
        yield handle


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private ``redis-server`` on a free loopback port (skips when it is not installed)."""
    with run_redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def queue_cluster(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueueCluster]:
    """Shared by the scale-out tests; a test that kills a worker starts it again before it ends."""
    workdir = tmp_path_factory.mktemp("queue-cluster")
    with run_redis_server(workdir, password="test-only-password") as redis, contextlib.ExitStack() as stack:
        cluster = QueueCluster(redis=redis, weights=tiny_weights, workdir=workdir, stack=stack)
        for index in range(2):
            cluster.start_worker(index)
        yield cluster
