"""One contract, two transports: the same scenarios against HttpWorkerClient (one worker on a Unix socket)
and RedisWorkerClient (workers behind the shared queue), both serving the same tiny weights."""

from __future__ import annotations

import base64
import functools

import pytest

from bot.worker_client.base import BadImage
from model_worker.wire.protocol import (
    ChatRequest,
    DoneEvent,
    FinishReason,
    ImageRef,
    QueuedEvent,
    StartedEvent,
    TokenEvent,
)
from tests.support.requests import one_turn

pytestmark = pytest.mark.timeout(180)


greedy = functools.partial(one_turn, max_new_tokens=12)


@pytest.fixture(params=["http", "redis"])
async def client(request):
    """A WorkerClient over each transport."""
    if request.param == "http":
        made = request.getfixturevalue("worker").client()
    else:
        made = request.getfixturevalue("queue_cluster").client()
    yield made
    await made.close()


async def answer(client, request: ChatRequest) -> list:
    return [event async for event in client.chat(request)]


async def test_event_sequence(client):
    events = await answer(client, greedy("hello there"))
    assert isinstance(events[0], QueuedEvent) and events[0].position >= 1
    first_token = next(i for i, e in enumerate(events) if isinstance(e, TokenEvent))
    assert StartedEvent() in events[:first_token]
    done = events[-1]
    assert isinstance(done, DoneEvent) and [e for e in events if isinstance(e, DoneEvent)] == [done]
    assert done.text == "".join(e.text for e in events if isinstance(e, TokenEvent))
    assert done.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert 0 < done.usage.completion_tokens <= 12 and done.usage.prompt_tokens > 0


async def test_not_an_image_is_bad_image(client):
    not_an_image = ImageRef(data=base64.b64encode(b"this is not a picture").decode())
    with pytest.raises(BadImage):
        await answer(client, greedy("what is this?", images=[not_an_image]))


async def test_ready_and_cancel_of_an_unknown_request(client):
    info = await client.ready()
    assert info.ready and info.model and info.device == "cpu"
    assert await client.cancel("no-such-request") is None  # a no-op, not an error


async def test_both_transports_give_the_same_greedy_answer(worker, queue_cluster):
    request = greedy("the same question", max_new_tokens=10)
    answers, models = [], []
    for made in (worker.client(), queue_cluster.client()):
        try:
            models.append((await made.ready()).model)
            answers.append((await answer(made, request))[-1].text)
        finally:
            await made.close()
    assert models[0] == models[1] and answers[0] == answers[1]
