"""The bot's supervision of its own worker child: restart after a crash, or when it is alive but stuck (the
worker's watchdog reports a hung engine step, or it stops answering), and a graceful stop."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from bot.worker_client.base import WorkerShuttingDown, WorkerUnavailable
from bot.worker_client.supervisor import WorkerSupervisor
from tests.support.requests import LONG, collect, one_turn, read_until_token, reply_of

# Guards against a hang only; the assertions are about what happens, not how fast.
HANG_GUARD_S = 120


async def test_killed_worker_fails_the_stream_restarts_and_serves(tiny_weights, tmp_path):
    supervisor = WorkerSupervisor(weights=tiny_weights, socket_path=tmp_path / "worker.sock", device="cpu",
                                  dtype="float32", restart_backoff_s=0.5,
                                  extra_args=("--shutdown-grace", "0.2"))
    async with asyncio.timeout(HANG_GUARD_S):
        async with supervisor:
            await supervisor.wait_ready()
            first_pid = supervisor.pid
            stream = supervisor.client.chat(one_turn(max_new_tokens=LONG))
            await read_until_token(stream)

            os.kill(first_pid, signal.SIGKILL)
            with pytest.raises(WorkerUnavailable):
                await collect(stream)

            await supervisor.wait_ready(restarts=1)
            assert supervisor.pid != first_pid
            streamed, done = reply_of(await collect(supervisor.client.chat(one_turn(max_new_tokens=8))))
            assert done.text == streamed

            # Leaving the context stops the worker gracefully: the running answer is told why.
            in_flight = supervisor.client.chat(one_turn(max_new_tokens=LONG))
            await read_until_token(in_flight)
            process = supervisor.process
            stopping = asyncio.create_task(supervisor.__aexit__(None, None, None))
            with pytest.raises(WorkerShuttingDown):
                await collect(in_flight)
            await stopping
    assert process.returncode == 0


async def test_a_stuck_engine_step_makes_the_worker_unhealthy_and_it_is_replaced(tiny_weights, tmp_path,
                                                                                monkeypatch, caplog):
    monkeypatch.setenv("MINIGPT4_TEST_HANG_ON", "please hang")
    supervisor = WorkerSupervisor(weights=tiny_weights, socket_path=tmp_path / "worker.sock", device="cpu",
                                  dtype="float32", restart_backoff_s=0.2, health_interval_s=0.3,
                                  module="tests.support.faulty_worker", extra_args=("--step-timeout", "1"))
    async with asyncio.timeout(HANG_GUARD_S):
        async with supervisor:
            await supervisor.wait_ready()
            first_pid = supervisor.pid
            stuck = supervisor.client.chat(one_turn("please hang", max_new_tokens=LONG))
            await anext(stuck)  # accepted: it is being prepared, then decoded until the engine hangs
            with pytest.raises(WorkerUnavailable):  # its /healthz said why, and the supervisor killed it
                await collect(stuck)

            await supervisor.wait_ready(restarts=1)
            assert supervisor.pid != first_pid
            assert any("alive but unhealthy: an engine step has been running for" in r.getMessage()
                       for r in caplog.records)
            streamed, done = reply_of(await collect(supervisor.client.chat(one_turn(max_new_tokens=8))))
            assert done.text == streamed


async def test_a_worker_that_stops_answering_is_replaced(tiny_weights, tmp_path, caplog):
    supervisor = WorkerSupervisor(weights=tiny_weights, socket_path=tmp_path / "worker.sock", device="cpu",
                                  dtype="float32", restart_backoff_s=0.2, health_interval_s=0.3)
    async with asyncio.timeout(HANG_GUARD_S):
        async with supervisor:
            await supervisor.wait_ready()
            first_pid = supervisor.pid
            os.kill(first_pid, signal.SIGSTOP)  # alive, but answers nothing any more
            await supervisor.wait_ready(restarts=1)
            assert supervisor.pid != first_pid
            assert any("does not answer its health check" in r.getMessage() for r in caplog.records)
            streamed, done = reply_of(await collect(supervisor.client.chat(one_turn(max_new_tokens=8))))
            assert done.text == streamed

