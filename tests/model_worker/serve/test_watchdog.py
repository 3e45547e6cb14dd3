"""The watchdog: an engine step that runs past ``--step-timeout`` turns ``/healthz`` unhealthy with the
reason, which ``python -m model_worker health`` (the containers' HEALTHCHECK) reports."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support.processes import run_python
from tests.support.requests import LONG, one_turn
from tests.support.worker import run_worker

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def hanging_worker(tiny_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGPT4_TEST_HANG_ON", "please hang")
    with run_worker(tiny_weights, tmp_path, module="tests.support.faulty_worker", step_timeout=1) as handle:
        yield handle


def health(handle) -> tuple[int, str]:
    result = run_python("-m", "model_worker", "health", "--socket", str(handle.socket_path), timeout=30)
    return result.returncode, result.stdout + result.stderr


async def test_a_hung_engine_step_makes_the_worker_unhealthy(hanging_worker):
    assert health(hanging_worker) == (0, "healthy\n")
    client = hanging_worker.client()
    stuck = client.chat(one_turn("please hang", max_new_tokens=LONG))
    await anext(stuck)
    for _ in range(100):
        status, body = hanging_worker.get("/healthz")
        if status == 503:
            break
        await asyncio.sleep(0.1)
    assert status == 503
    reason = json.loads(body)["reason"]
    assert json.loads(body)["alive"] is True and "engine step has been running" in reason
    code, said = await asyncio.to_thread(health, hanging_worker)
    assert code == 1 and "unhealthy: an engine step has been running" in said
    await stuck.aclose()
    await client.close()


def test_health_of_a_worker_that_is_not_there(tmp_path):
    result = run_python("-m", "model_worker", "health", "--socket", str(tmp_path / "nobody.sock"))
    assert result.returncode == 1 and "does not answer" in result.stderr

