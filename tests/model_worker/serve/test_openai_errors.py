"""Every refusal of the OpenAI-compatible API has its HTTP status and OpenAI's error shape, and the official
SDK raises its matching exception. Against a real ``serve`` process with a bearer token that runs one
sequence at a time with room for one more waiting; loading, shutting down and a failing device against
the front end on a loopback listener, with no model or over a scheduler on the echo engine."""

from __future__ import annotations

import base64

import aiohttp
import openai
import pytest
from aiohttp import web

from model_worker.scheduling.metrics import WorkerMetrics
from model_worker.serve.http_app import WorkerState, create_app
from model_worker.serve.openai_api import OpenAiApi
from model_worker.serve.openai_request import MODEL_ID
from model_worker.wire.protocol import NDJSON, ErrorCode, parse_event
from tests.fakes.loopback import serve_on_loopback
from tests.support.echo_engine import EchoEngine
from tests.support.images import png
from tests.support.requests import LONG
from tests.support.worker import run_worker

TOKEN = "worker-token-for-the-openai-tests"
ERROR_FIELDS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def guarded_worker(tiny_weights, tmp_path_factory):
    with run_worker(tiny_weights, tmp_path_factory.mktemp("openai-guarded-worker"), tcp=True, token=TOKEN,
                    max_batch_size=1, max_queue=1, max_body_mb=1, allow_remote_images=True) as handle:
        yield handle


def sdk(worker, api_key: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{worker.url}/v1", api_key=api_key, max_retries=0, timeout=60)


def ask(content: object = "hello", **options: object) -> dict[str, object]:
    return {"model": MODEL_ID, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **options}


def error_of(exc: openai.APIStatusError, status: int) -> dict[str, object]:
    """The error object of a refusal, checked for OpenAI's shape."""
    assert exc.status_code == status
    body = exc.response.json()
    assert body.keys() == {"error"} and body["error"].keys() == ERROR_FIELDS
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def test_the_right_token_is_answered(guarded_worker):
    with sdk(guarded_worker) as client:
        assert client.chat.completions.create(**ask()).choices[0].message.content is not None


@pytest.mark.parametrize("call", ["completion", "models"])
def test_a_wrong_api_key_is_401_authentication_error(guarded_worker, call):
    with sdk(guarded_worker, api_key="sk-wrong") as client, pytest.raises(openai.AuthenticationError) as caught:
        if call == "models":
            client.models.list()
        else:
            client.chat.completions.create(**ask())
    error = error_of(caught.value, 401)
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"


async def test_no_token_is_401_in_each_front_ends_own_shape(guarded_worker):
    async with aiohttp.ClientSession(guarded_worker.url) as http:  # no Authorization header
        async with http.post("/v1/chat/completions", json=ask()) as response:
            assert response.status == 401 and response.content_type == "application/json"
            assert (await response.json())["error"]["code"] == "invalid_api_key"
        async with http.post("/v1/chat", json={"conversation": [{"role": "user", "text": "hi"}]}) as response:
            assert response.status == 401 and response.content_type == NDJSON  # the bot's API is unchanged
            assert parse_event(await response.read()).code is ErrorCode.BAD_REQUEST


def test_another_model_is_404_model_not_found(guarded_worker):
    with sdk(guarded_worker) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(**{**ask(), "model": "gpt-4o"})
        assert error_of(caught.value, 404)["code"] == "model_not_found"
        with pytest.raises(openai.NotFoundError) as caught:
            client.models.retrieve("gpt-4o")
        assert error_of(caught.value, 404)["code"] == "model_not_found"


def test_a_full_queue_is_429_with_retry_after(guarded_worker):
    with sdk(guarded_worker) as client:
        running = client.chat.completions.create(**ask(max_tokens=LONG), stream=True)
        waiting = None
        try:
            next(chunk for chunk in running if chunk.choices and chunk.choices[0].delta.content)  # it runs:
            # the only place in the batch is taken
            waiting = client.chat.completions.create(**ask(max_tokens=LONG), stream=True)  # it waits
            with pytest.raises(openai.RateLimitError) as caught:
                client.chat.completions.create(**ask())
        finally:
            running.close()
            if waiting is not None:
                waiting.close()
    error = error_of(caught.value, 429)
    assert error["code"] == "busy" and error["type"] == "rate_limit_error"
    assert float(caught.value.response.headers["Retry-After"]) > 0


@pytest.mark.parametrize(("arguments", "param", "code"), [
    ({"n": 3}, "n", "bad_request"),
    ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "call_1"}]}, "messages.0.role", "bad_request"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hel"}]}, "messages",
     "bad_request"),
    ({"max_tokens": 0}, "max_tokens", "bad_request"),
    (ask([{"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}}]),
     "messages.0.content.0.image_url.url", "bad_request"),
    # Found only when the worker prepares the request: a picture that is not one, a turn over the context.
    (ask([{"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                     + base64.b64encode(b"not a picture").decode()}}]),
     None, "bad_image"),
    (ask("word " * 6000), None, "context_length_exceeded"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_a_bad_request_is_400_naming_what_is_wrong(guarded_worker, arguments, param, code, stream):
    with sdk(guarded_worker) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**{**ask(), **arguments}, stream=stream)
    error = error_of(caught.value, 400)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")


def test_a_body_over_the_limit_is_413(guarded_worker):
    huge = "data:image/png;base64," + base64.b64encode(bytes(2 * 2**20)).decode()
    with sdk(guarded_worker) as client, pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**ask([{"type": "image_url", "image_url": {"url": huge}}]))
    assert "larger than this worker accepts" in error_of(caught.value, 413)["message"]


@pytest.fixture
async def picture_server():
    """A web server on loopback with one picture and one page that is not a picture."""
    async def picture(request: web.Request) -> web.Response:
        return web.Response(body=png((90, 40, 160)), content_type="image/png")

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html>hi</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/cat.png", picture)
    app.router.add_get("/page", page)
    runner, port = await serve_on_loopback(app)
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_an_enabled_remote_image_answers_as_the_same_image_sent_inline(guarded_worker, picture_server):
    inline = "data:image/png;base64," + base64.b64encode(png((90, 40, 160))).decode()

    def question(url: str) -> dict[str, object]:
        return ask([{"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": {"url": url}}],
                   temperature=0, max_tokens=8)

    async with openai.AsyncOpenAI(base_url=f"{guarded_worker.url}/v1", api_key=TOKEN, max_retries=0) as client:
        fetched = await client.chat.completions.create(**question(f"{picture_server}/cat.png?sig=secret-sig"))
        sent = await client.chat.completions.create(**question(inline))
        assert fetched.choices[0].message.content == sent.choices[0].message.content
        assert fetched.usage == sent.usage
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(**question(f"{picture_server}/page"))
    assert "not an image" in error_of(caught.value, 400)["message"]
    assert "secret-sig" not in guarded_worker.log_text()  # a signed URL is never logged whole


@pytest.fixture
async def model_less_api():
    """The OpenAI front end on a loopback listener, as it is while the model loads (never started)."""
    api = OpenAiApi(metrics=WorkerMetrics(), max_body_bytes=2**20, loading_progress=lambda: "loading the weights")
    runner, port = await serve_on_loopback(create_app(WorkerState(), [api], token=None))
    yield api, f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


async def test_while_loading_and_shutting_down_the_answer_is_503(model_less_api):
    api, base_url = model_less_api
    async with openai.AsyncOpenAI(base_url=base_url, api_key="any", max_retries=0) as client:
        assert [model.id async for model in client.models.list()] == [MODEL_ID]  # listed while loading
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(**ask())
        error = error_of(caught.value, 503)
        assert error["code"] == "loading" and "loading the weights" in error["message"]
        assert caught.value.response.headers["Retry-After"] == "5"
        api.stop_taking_work()
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(**ask(), stream=True)
        assert error_of(caught.value, 503)["code"] == "shutting_down"


@pytest.fixture
async def echo_api(make_scheduler):
    """The OpenAI front end over a real scheduler whose engine echoes the question (``!`` makes a decode
    step fail), on a loopback listener."""
    scheduler = make_scheduler(EchoEngine())
    state = WorkerState(scheduler=scheduler)
    api = OpenAiApi(metrics=state.metrics, max_body_bytes=2**20, loading_progress=lambda: "ready")
    api.start(scheduler)
    runner, port = await serve_on_loopback(create_app(state, [api], token=None))
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


async def test_a_failure_after_the_answer_began_ends_the_stream_with_an_error_event(echo_api):
    async with openai.AsyncOpenAI(base_url=echo_api, api_key="any", max_retries=0) as client:
        stream = await client.chat.completions.create(**ask("ab!cd", max_tokens=10), stream=True)
        received = []
        with pytest.raises(openai.APIError) as caught:
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
        assert "".join(received) == "a"  # the first token came from prefill, then decoding failed
        assert caught.value.body["code"] == "internal" and caught.value.body["type"] == "server_error"
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(**ask("ab!cd", max_tokens=10))
        assert error_of(caught.value, 500)["code"] == "internal"
