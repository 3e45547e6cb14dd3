"""The worker as a small host runs it: quantized or in bfloat16 on the CPU, answering through the real
``serve`` process and saying what runs on ``/readyz``; a memory budget sizes the batch, and one that cannot
hold a single conversation stops start-up with one sentence."""

from __future__ import annotations

import json

import pytest

from tests.support.processes import run_python
from tests.support.requests import collect, one_turn, reply_of
from tests.support.worker import run_worker

pytestmark = pytest.mark.timeout(240)


@pytest.mark.parametrize(("dtype", "quantize"), [("bfloat16", "none"), ("float32", "int8"), ("bfloat16", "int4")])
async def test_a_quantized_or_bfloat16_worker_answers_and_says_what_runs(wide_weights, tmp_path, dtype, quantize):
    with run_worker(wide_weights, tmp_path, dtype=dtype, quantize=quantize) as worker:
        status, body = worker.get("/readyz")
        client = worker.client()
        try:
            streamed, done = reply_of(await collect(client.chat(one_turn("What can you see?", max_new_tokens=8))))
        finally:
            await client.close()
    info = json.loads(body)
    assert status == 200 and (info["device"], info["dtype"], info["quantize"]) == ("cpu", dtype, quantize)
    assert done.usage.completion_tokens > 0 and done.text == streamed


async def test_the_memory_budget_sizes_the_batch_and_is_reported(tiny_weights, tmp_path):
    with run_worker(tiny_weights, tmp_path / "roomy") as roomy, \
            run_worker(tiny_weights, tmp_path / "tight", memory_budget_gb=0.48) as tight:
        roomy_info, tight_info = (json.loads(worker.get("/readyz")[1]) for worker in (roomy, tight))
    assert roomy_info["max_batch_size"] == 8  # the --max-batch-size default: memory is not the limit
    assert 1 <= tight_info["max_batch_size"] < 8  # the budget is
    assert tight_info["memory_budget_gb"] == 0.48
    assert tight_info["max_tokens_in_flight"] == tight_info["max_batch_size"] * 2048
    assert tight_info["kv_bytes_per_token"] > 0 and tight_info["prefix_cache_tokens"] >= 0


def test_a_budget_that_cannot_hold_one_conversation_stops_start_up_clearly(tiny_weights, tmp_path):
    result = run_python("-m", "model_worker", "serve", "--weights", str(tiny_weights), "--socket",
                        str(tmp_path / "w.sock"), "--device", "cpu", "--memory-budget-gb", "0.01", timeout=120)
    assert result.returncode != 0
    assert "cannot hold one 2048-token conversation" in result.stderr and "Traceback" not in result.stderr
