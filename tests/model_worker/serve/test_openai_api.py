"""The OpenAI-compatible API through the official ``openai`` SDK (sync and async, whole and streamed),
against a real ``serve`` process on tiny random weights, listening on loopback TCP beside ``/v1/chat``."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import openai
import pytest

from model_worker.serve.openai_request import MODEL_ID
from model_worker.wire.protocol import DoneEvent
from tests.support.images import png
from tests.support.requests import LONG, collect, metric_value, one_turn, reply_of
from tests.support.worker import run_worker

API_KEY = "sk-test-key-that-must-never-be-logged"
IMAGE = png((30, 160, 90))
IMAGE_URL = "data:image/png;base64," + base64.b64encode(IMAGE).decode()
QUESTION = "What can you see in the picture?"
CANCELLED = 'finish_reason="cancelled",front_end="openai"'


@pytest.fixture(scope="module")
def api_worker(tiny_weights, tmp_path_factory):
    with run_worker(tiny_weights, tmp_path_factory.mktemp("openai-worker"), tcp=True,
                    max_batch_size=16) as handle:
        yield handle


@pytest.fixture
def client(api_worker):
    with openai.OpenAI(base_url=f"{api_worker.url}/v1", api_key=API_KEY, max_retries=0, timeout=60) as sdk:
        yield sdk


@pytest.fixture
async def async_client(api_worker):
    async with openai.AsyncOpenAI(base_url=f"{api_worker.url}/v1", api_key=API_KEY, max_retries=0,
                                  timeout=60) as sdk:
        yield sdk


def ask(text: str = QUESTION, *, image: bool = False, **options: object) -> dict[str, object]:
    """The arguments of a greedy chat completion, with a system message the model never sees."""
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": IMAGE_URL}}] \
        if image else text
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": content}]
    return {"model": MODEL_ID, "messages": messages, "temperature": 0, "max_tokens": 12, **options}


async def ndjson_answer(worker, text: str = QUESTION, *, image: bool = False, max_new_tokens: int = 12) -> DoneEvent:
    """The same question through the bot's own API (/v1/chat), greedy."""
    client = worker.client()
    try:
        events = await collect(client.chat(one_turn(text, images=[IMAGE] if image else [],
                                                    max_new_tokens=max_new_tokens)))
    finally:
        await client.close()
    streamed, done = reply_of(events)
    assert streamed == done.text
    return done


async def scrape(worker) -> str:
    async with worker.http_session() as http, http.get("/metrics") as response:
        return await response.text()


def test_the_model_list_names_the_one_model(client):
    raw = client.models.with_raw_response.list()
    assert raw.http_response.json() == {"object": "list", "data": [
        {"id": MODEL_ID, "object": "model", "created": raw.parse().data[0].created, "owned_by": "rinna"}]}
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID


def test_a_greedy_text_answer_is_the_ndjson_apis_and_counts_its_tokens(client, api_worker):
    before = asyncio.run(scrape(api_worker))
    completion = client.chat.completions.create(**ask())
    after = asyncio.run(scrape(api_worker))
    expected = asyncio.run(ndjson_answer(api_worker))

    choice = completion.choices[0]
    assert completion.object == "chat.completion" and completion.model == MODEL_ID
    assert completion.id.startswith("chatcmpl-") and completion.created > 0
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason.value
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        expected.usage.prompt_tokens, expected.usage.completion_tokens)
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    generated = metric_value(after, "worker_generated_tokens_total") - metric_value(before, "worker_generated_tokens_total")
    assert generated == completion.usage.completion_tokens
    # Metrics say which front end each request came through.
    openai_done = metric_value(after, "worker_requests_finished_total", 'front_end="openai"')
    assert openai_done - metric_value(before, "worker_requests_finished_total", 'front_end="openai"') == 1
    assert metric_value(asyncio.run(scrape(api_worker)), "worker_requests_finished_total",
                        'front_end="ndjson"') >= 1


async def test_an_image_question_is_the_ndjson_apis_answer(async_client, api_worker):
    completion = await async_client.chat.completions.create(**ask(image=True))
    expected = await ndjson_answer(api_worker, image=True)
    assert completion.choices[0].message.content == expected.text
    assert completion.usage.prompt_tokens == expected.usage.prompt_tokens  # the image's query tokens included
    assert completion.usage.completion_tokens == expected.usage.completion_tokens


def test_a_stream_has_the_role_first_then_the_text_the_finish_and_the_usage(client):
    whole = client.chat.completions.create(**ask(max_tokens=16))
    chunks = list(client.chat.completions.create(**ask(max_tokens=16), stream=True,
                                                 stream_options={"include_usage": True}))
    first, *middle, last, usage = chunks
    assert first.choices[0].delta.role == "assistant" and not first.choices[0].delta.content
    assert "".join(c.choices[0].delta.content for c in middle) == whole.choices[0].message.content
    assert all(c.choices[0].finish_reason is None and c.usage is None for c in [first, *middle])
    assert last.choices[0].finish_reason == whole.choices[0].finish_reason and not last.choices[0].delta.content
    assert usage.choices == [] and usage.usage == whole.usage
    assert {c.id for c in chunks} == {chunks[0].id} and {c.object for c in chunks} == {"chat.completion.chunk"}


async def test_an_async_stream_with_an_image_answers_as_the_ndjson_api(async_client, api_worker):
    stream = await async_client.chat.completions.create(**ask(image=True), stream=True)
    chunks = [chunk async for chunk in stream]
    expected = await ndjson_answer(api_worker, image=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == expected.finish_reason.value
    assert all(c.choices and c.usage is None for c in chunks)  # no usage chunk unless asked for


async def test_the_stream_is_server_sent_events_ending_with_done(api_worker):
    body = ask(max_tokens=4, stream=True, stream_options={"include_usage": True})
    async with api_worker.http_session() as http, http.post("/v1/chat/completions", json=body) as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        raw = (await response.read()).decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(event.startswith("data: ") and "\n" not in event for event in events[:-1])
    objects = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert objects[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert objects[-2]["choices"][0]["finish_reason"] == "length"
    assert objects[-1]["choices"] == [] and objects[-1]["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_text_ends_the_answer_before_it(client, api_worker, stream):
    full = client.chat.completions.create(**ask(max_tokens=24)).choices[0].message.content
    assert len(full) >= 6, full
    stop = full[len(full) // 2:len(full) // 2 + 2]
    before = asyncio.run(scrape(api_worker))
    text, finish = complete(client, ask(max_tokens=LONG, stop=["never-in-the-answer", stop]), stream=stream)
    assert text == full[:full.find(stop)] and finish == "stop"
    after = asyncio.run(scrape(api_worker))
    # The generation itself was stopped at the scheduler (long before max_tokens), not only its text cut.
    assert metric_value(after, "worker_requests_finished_total", CANCELLED) == \
        metric_value(before, "worker_requests_finished_total", CANCELLED) + 1


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_ends_the_answer_with_length(client, stream):
    text, finish = complete(client, ask(max_completion_tokens=3), stream=stream)
    assert finish == "length" and text
    usage = client.chat.completions.create(**ask(max_tokens=3)).usage
    assert usage.completion_tokens == 3


def complete(client: openai.OpenAI, arguments: dict[str, object], *, stream: bool) -> tuple[str, str]:
    """The answer's text and finish reason, read whole or from its stream."""
    if not stream:
        choice = client.chat.completions.create(**arguments).choices[0]
        return choice.message.content, choice.finish_reason
    chunks = list(client.chat.completions.create(**arguments, stream=True))
    return "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].finish_reason


async def test_sixteen_concurrent_streams_are_batched_together_and_all_complete(async_client, api_worker):
    before = await scrape(api_worker)

    async def one(index: int) -> tuple[str, str]:
        stream = await async_client.chat.completions.create(
            **ask(f"Tell me about bus number {index}.", max_tokens=24), stream=True, user=f"user-{index % 4}")
        chunks = [chunk async for chunk in stream]
        return "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].finish_reason

    answers = await asyncio.gather(*(one(i) for i in range(16)))
    after = await scrape(api_worker)

    def delta(name: str, labels: str = "") -> float:
        return metric_value(after, name, labels) - metric_value(before, name, labels)

    assert all(text and finish in ("stop", "length") for text, finish in answers)
    assert delta("worker_requests_finished_total", 'front_end="openai"') == 16
    steps = delta("worker_decode_batch_size_count")
    single = delta("worker_decode_batch_size_bucket", 'le="1.0"')
    assert steps > single, "no decode step advanced more than one sequence"


async def test_an_async_client_that_closes_its_stream_frees_its_place(async_client, api_worker):
    cancelled_before = metric_value(await scrape(api_worker), "worker_requests_finished_total", CANCELLED)
    stream = await async_client.chat.completions.create(**ask(max_tokens=LONG), stream=True)
    await anext(stream)
    await anext(stream)
    assert await running(api_worker) == 1
    await stream.close()
    await until_cancelled(api_worker, cancelled_before)


def test_a_sync_client_that_closes_its_stream_frees_its_place(client, api_worker):
    cancelled_before = metric_value(asyncio.run(scrape(api_worker)), "worker_requests_finished_total", CANCELLED)
    stream = client.chat.completions.create(**ask(image=True, max_tokens=LONG), stream=True)
    next(stream)
    next(stream)
    stream.close()
    asyncio.run(until_cancelled(api_worker, cancelled_before))


async def running(worker) -> int:
    async with worker.http_session() as http, http.get("/readyz") as response:
        return (await response.json())["running"]


async def until_cancelled(worker, cancelled_before: float, bound_s: float = 10.0) -> None:
    """Poll ``/readyz`` until nothing runs (a bound, not a timing: it is usually at once), then check that
    the request was cancelled rather than run to its end."""
    deadline = time.monotonic() + bound_s
    while await running(worker):
        assert time.monotonic() < deadline, "the closed stream's request kept its place"
        await asyncio.sleep(0.02)
    cancelled = metric_value(await scrape(worker), "worker_requests_finished_total", CANCELLED)
    assert cancelled == cancelled_before + 1


def test_remote_image_urls_are_refused_unless_enabled(client):
    arguments = ask()
    arguments["messages"][-1]["content"] = [
        {"type": "text", "text": "?"}, {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**arguments)
    error = caught.value.response.json()["error"]
    assert error["param"] == "messages.1.content.1.image_url.url" and "not enabled" in error["message"]


def test_the_api_key_never_reaches_the_log(client, api_worker):
    client.chat.completions.create(**ask(max_tokens=2))
    assert API_KEY not in api_worker.log_text()
