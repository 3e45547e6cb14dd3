"""Through the real ``serve`` process: concurrent requests batch without changing answers, follow-up turns
reuse the image and the history (its metrics say so), and images cross the queue once, even across a restart."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import pytest

from bot.worker_client.image_refs import ImageRefClient
from model_worker.wire.protocol import ImageRef, Turn
from tests.support.images import png
from tests.support.requests import collect, conversation, metric_value, reply_of
from tests.support.worker import run_worker

greedy = functools.partial(conversation, user="u")


async def scrape(handle) -> str:
    async with handle.http_session() as session, session.get("/metrics") as response:
        return await response.text()


@pytest.fixture(scope="module")
def batching_worker(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    with run_worker(tiny_weights, tmp_path_factory.mktemp("batching-worker"), max_batch_size=8) as handle:
        yield handle


async def test_eight_concurrent_requests_answer_as_they_do_one_at_a_time(batching_worker, tiny_weights, tmp_path):
    requests = [greedy([Turn(role="user", text=f"tell me about the bus number {i}",
                             images=[ImageRef.from_bytes(png((25 * i, 10, 200)))] if i % 3 == 0 else [])],
                       max_new_tokens=10 + i) for i in range(8)]
    client = batching_worker.client()
    try:
        together = await asyncio.gather(*(collect(client.chat(r)) for r in requests))
    finally:
        await client.close()
    text = await scrape(batching_worker)
    # More than one sequence advanced in some step (the histogram's sum exceeds its count).
    assert metric_value(text, "worker_decode_batch_size_sum") > metric_value(text, "worker_decode_batch_size_count")
    with run_worker(tiny_weights, tmp_path / "serial", max_batch_size=1, prefix_cache_tokens=0) as serial:
        client = serial.client()
        try:
            alone = [await collect(client.chat(r)) for r in requests]
        finally:
            await client.close()
    assert [answer(events) for events in together] == [answer(events) for events in alone]


def answer(events: list) -> tuple:
    streamed, done = reply_of(events)
    return streamed, done.text, done.finish_reason, done.usage


async def test_a_follow_up_turn_reuses_the_image_and_the_history(batching_worker):
    image = png((210, 180, 20))
    opening = Turn(role="user", text="what is in the picture?", images=[ImageRef.from_bytes(image)])
    client = ImageRefClient(batching_worker.client())
    try:
        first, _ = reply_of(await collect(client.chat(greedy([opening]))))
        before = await scrape(batching_worker)
        follow_up = greedy([opening, Turn(role="assistant", text=first), Turn(role="user", text="and then?")])
        second_events = await collect(client.chat(follow_up))
    finally:
        await client.close()
    after = await scrape(batching_worker)

    def delta(name: str) -> float:
        return metric_value(after, name) - metric_value(before, name)

    done = second_events[-1]
    assert delta("worker_image_cache_misses_total") == 0  # never re-encoded
    assert delta("worker_image_cache_hits_total") == 1  # sent as {"sha256": ...} and found
    assert delta("worker_prefix_cache_hits_total") == 1
    reused, computed = delta("worker_prefix_reused_tokens_total"), delta("worker_prefilled_tokens_total")
    assert reused + computed == done.usage.prompt_tokens
    assert computed < done.usage.prompt_tokens / 2  # only the new turn (and the reply's re-tokenised edge)


async def test_the_image_ref_client_resends_data_after_the_worker_forgot(tiny_weights, tmp_path, caplog):
    caplog.set_level("INFO", logger="bot.worker_client.image_refs")
    image = png((5, 90, 160))
    opening = Turn(role="user", text="describe it", images=[ImageRef.from_bytes(image)])
    workdir = tmp_path / "worker"  # both processes listen on the same socket, as a restarted worker does
    with run_worker(tiny_weights, workdir) as worker:
        client = ImageRefClient(worker.client())
        first, _ = reply_of(await collect(client.chat(greedy([opening]))))
        await client.close()
    follow_up = greedy([opening, Turn(role="assistant", text=first), Turn(role="user", text="more please")])
    with run_worker(tiny_weights, workdir) as restarted:  # a new process: its caches are empty
        try:
            events = await collect(client.chat(follow_up))
        finally:
            await client.close()
        text = await scrape(restarted)
    reply, done = reply_of(events)
    assert done.text == reply
    assert metric_value(text, "worker_request_errors_total", 'code="unknown_image"') == 1  # refused once ...
    assert metric_value(text, "worker_image_cache_misses_total") == 1  # ... then got the data and encoded it
    assert "resending" in caplog.text
