"""Queueing, fairness, cancellation, limits and the bearer token, against a real ``serve`` process.

The worker here runs one sequence at a time (``--max-batch-size 1``) so that requests must wait.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from bot.worker_client.base import BadRequest, WorkerBusy
from model_worker.wire.protocol import ErrorCode, FinishReason, QueuedEvent, parse_event
from tests.support.requests import LONG, collect, metric_value, one_turn, read_until_token, reply_of
from tests.support.worker import run_worker

MAX_QUEUE = 8
DELETED_ID = "cancel/by delete?"  # any string is a valid id, so the client must quote it


@pytest.fixture(scope="module")
def queueing_worker(tiny_weights, tmp_path_factory):
    with run_worker(tiny_weights, tmp_path_factory.mktemp("queueing-worker"), max_batch_size=1,
                    max_queue=MAX_QUEUE, max_body_mb=1, token="test-token-123") as handle:
        yield handle


@pytest.fixture
async def client(queueing_worker):
    client = queueing_worker.client()
    yield client
    await client.close()


async def cancelled_count(worker) -> float:
    async with worker.http_session() as http:
        async with http.get("/metrics") as response:
            return metric_value(await response.text(), "worker_requests_finished_total",
                                'finish_reason="cancelled"')


async def test_eight_requests_from_three_users_complete_and_positions_decrease(client):
    users = ["ann", "bob", "cho"]
    streams, tasks = [], []
    for i in range(8):
        stream = client.chat(one_turn(f"Request {i % 3}", user=users[i % 3], max_new_tokens=24))
        first = await anext(stream)  # submitted one after another, so the arrival order is known
        assert isinstance(first, QueuedEvent)
        streams.append([first])
        tasks.append(asyncio.create_task(collect(stream)))
    results = [seen + rest for seen, rest in zip(streams, await asyncio.gather(*tasks), strict=True)]

    replies = [reply_of(events) for events in results]
    assert all(done.text == streamed for streamed, done in replies)
    # Same prompt, same greedy answer, whoever asked and whenever it ran.
    assert replies[0][1].text == replies[3][1].text == replies[6][1].text
    last_positions = [e.position for e in results[-1] if isinstance(e, QueuedEvent)]
    assert len(last_positions) >= 2 and last_positions[-1] == 1
    assert all(a > b for a, b in zip(last_positions, last_positions[1:], strict=False))


async def test_full_queue_answers_busy(client, queueing_worker):
    streams = []
    try:
        running = client.chat(one_turn(max_new_tokens=LONG))
        await read_until_token(running)
        streams.append(running)
        for i in range(MAX_QUEUE):
            waiting = client.chat(one_turn(user=f"user{i}", max_new_tokens=LONG))
            assert isinstance(await anext(waiting), QueuedEvent)
            streams.append(waiting)
        with pytest.raises(WorkerBusy) as busy:
            await collect(client.chat(one_turn(user="late")))
        assert busy.value.retry_after and busy.value.retry_after > 0
    finally:
        for stream in reversed(streams):  # disconnecting cancels them all
            await stream.aclose()
    # The places were freed: the next request is served.
    _, done = reply_of(await collect(client.chat(one_turn(max_new_tokens=4))))
    assert done.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)


async def test_cancel_by_delete_stops_work_and_frees_the_place(client):
    long = client.chat(one_turn(max_new_tokens=LONG, request_id=DELETED_ID))
    await read_until_token(long)
    follower = asyncio.create_task(collect(client.chat(one_turn("next", max_new_tokens=6))))

    await client.cancel(DELETED_ID)
    _, cancelled = reply_of(await collect(long))
    assert cancelled.finish_reason is FinishReason.CANCELLED
    assert 0 < cancelled.usage.completion_tokens < LONG
    _, served = reply_of(await follower)
    assert served.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    await client.cancel(DELETED_ID)  # already ended: a no-op


async def test_disconnect_cancels(client, queueing_worker):
    before = await cancelled_count(queueing_worker)
    long = client.chat(one_turn(max_new_tokens=LONG))
    await read_until_token(long)
    follower = asyncio.create_task(collect(client.chat(one_turn("next", max_new_tokens=6))))

    await long.aclose()  # the client goes away mid-answer
    _, served = reply_of(await follower)
    assert served.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert await cancelled_count(queueing_worker) == before + 1


async def test_oversized_body_is_413(client, queueing_worker):
    body = b'{"conversation": [{"role": "user", "text": "' + b"x" * (2 * 2**20) + b'"}]}'
    async with queueing_worker.http_session() as http:
        async with http.post("/v1/chat", data=body, headers={"Content-Type": "application/json"}) as response:
            assert response.status == 413
            event = parse_event(await response.read())
    assert event.code is ErrorCode.BAD_REQUEST and "larger" in event.message
    with pytest.raises(BadRequest):
        await collect(client.chat(one_turn("a large photo", images=[os.urandom(2 * 2**20)])))


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "test-token-123"])
async def test_token_is_checked_on_every_request(queueing_worker, path, authorization):
    async with queueing_worker.http_session() as http:
        headers = {"Authorization": authorization} if authorization else {"Authorization": ""}
        async with http.get(path, headers=headers) as response:
            assert response.status == 401
        async with http.get(path) as response:  # the session's own, correct header
            assert response.status == 200


async def test_unknown_request_cannot_be_cancelled(queueing_worker):
    async with queueing_worker.http_session() as http:
        async with http.delete("/v1/requests/no-such-request") as response:
            assert response.status == 404
