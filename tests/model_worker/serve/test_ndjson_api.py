"""The worker's HTTP API, end to end, against a real ``serve`` process on tiny random weights."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from bot.worker_client.base import BadImage, BadRequest
from model_worker.wire.protocol import NDJSON, ErrorCode, FinishReason, QueuedEvent, StartedEvent, parse_event
from tests.support.images import png
from tests.support.requests import collect, metric_value, one_turn, reply_of


def test_socket_is_private_to_its_user(worker):
    assert stat.S_IMODE(os.stat(worker.socket_path).st_mode) == 0o600


async def test_health_ready_and_metrics(worker):
    client = worker.client()
    try:
        info = await client.ready()
    finally:
        await client.close()
    assert info.ready and info.device == "cpu" and info.model
    async with worker.http_session() as http:
        async with http.get("/healthz") as health:
            assert health.status == 200
        async with http.get("/metrics") as metrics:
            assert metrics.status == 200
            text = await metrics.text()
    for name in ("worker_queue_depth", "worker_running_requests", "worker_decode_batch_size_bucket",
                 "worker_generated_tokens_total", "worker_request_duration_seconds_bucket",
                 "worker_time_to_first_token_seconds_bucket"):
        assert name in text


async def test_streamed_chat_events_and_metrics(worker):
    async with worker.http_session() as http:
        async with http.get("/metrics") as before:
            tokens_before = metric_value(await before.text(), "worker_generated_tokens_total")
    client = worker.client()
    try:
        events = await collect(client.chat(one_turn(max_new_tokens=12)))
    finally:
        await client.close()

    assert isinstance(events[0], QueuedEvent) and events[0].position >= 1
    assert StartedEvent() in events
    streamed, done = reply_of(events)
    assert done.text == streamed and streamed
    assert done.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert 0 < done.usage.completion_tokens <= 12 and done.usage.prompt_tokens > 0
    assert {"queue_s", "ttft_s", "total_s"} <= done.timings.keys()
    async with worker.http_session() as http:
        async with http.get("/metrics") as after:
            text = await after.text()
    assert metric_value(text, "worker_generated_tokens_total") >= tokens_before + done.usage.completion_tokens
    assert metric_value(text, "worker_time_to_first_token_seconds_count") >= 1


async def test_greedy_answer_is_reproducible(worker):
    client = worker.client()
    try:
        first = reply_of(await collect(client.chat(one_turn("こんにちは", max_new_tokens=10))))[1]
        second = reply_of(await collect(client.chat(one_turn("こんにちは", max_new_tokens=10))))[1]
    finally:
        await client.close()
    assert first.text == second.text


@pytest.mark.parametrize(("body", "reason"), [
    (b'{"conversation": [', "Invalid JSON"),
    (b'{"conversation": [{"role": "assistant", "text": "hi"}]}', "must end with a user turn"),
    (b'{"conversation": [{"role": "user", "text": "hi"}], "generation": {"max_new_tokens": 0}}',
     "generation.max_new_tokens"),
])
async def test_malformed_request_is_400_with_reason(worker, body, reason):
    async with worker.http_session() as http:
        async with http.post("/v1/chat", data=body, headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400
            assert response.content_type == NDJSON
            event = parse_event(await response.read())
    assert event.code is ErrorCode.BAD_REQUEST and reason in event.message


@pytest.mark.parametrize("image", [
    {"data": "this is not base64!"},
    {"data": base64.b64encode(b"plain text, not an image").decode()},
])
async def test_bad_image_is_rejected(worker, image):
    client = worker.client()
    try:
        with pytest.raises(BadImage):
            await collect(client.chat(one_turn("What is this?", images=[image])))
        # The worker carries on: the same conversation with a real picture is answered.
        good = {"data": base64.b64encode(png((200, 30, 30), size=(32, 24))).decode()}
        streamed, done = reply_of(await collect(client.chat(one_turn("What is this?", images=[good]))))
    finally:
        await client.close()
    assert done.text == streamed


async def test_duplicate_request_id_while_running_is_refused(worker):
    client = worker.client()
    try:
        first = client.chat(one_turn(max_new_tokens=400, request_id="same-id"))
        await anext(first)
        with pytest.raises(BadRequest):
            await collect(client.chat(one_turn(request_id="same-id")))
        await first.aclose()
    finally:
        await client.close()
