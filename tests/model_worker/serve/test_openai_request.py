"""OpenAI chat-completions requests become the worker's own requests: roles, content parts, images,
sampling defaults, and refusals that name the field at fault."""

from __future__ import annotations

import base64
import json

import pytest

from model_worker.serve.front_end import Malformed
from model_worker.serve.openai_request import (
    MODEL_ID,
    fairness_key,
    parse_completion_request,
    remote_image_urls,
    to_chat_request,
)
from model_worker.wire.protocol import GenerationParams, ImageRef
from tests.support.images import png

PNG = png()
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


def parse(**fields: object):
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], **fields}
    return parse_completion_request(json.dumps(body).encode())


def convert(downloaded: dict[str, ImageRef] | None = None, **fields: object):
    return to_chat_request(parse(**fields), request_id="chatcmpl-1", user="u", downloaded=downloaded)


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url, "detail": "high"}}


def refusal(**fields: object) -> Malformed:
    with pytest.raises(Malformed) as caught:
        convert(**fields)
    return caught.value


def test_system_and_developer_messages_are_left_out_and_the_others_become_turns():
    request = convert(messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, image_part(DATA_URL),
                                     {"type": "text", "text": "Be brief."}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        {"role": "user", "content": "Which colour?"},
    ])
    assert [(turn.role, turn.text) for turn in request.conversation] == [
        ("user", "What is this?\nBe brief."), ("assistant", "A cat."), ("user", "Which colour?")]
    assert request.conversation[0].images == [ImageRef(data=base64.b64encode(PNG).decode())]
    assert request.request_id == "chatcmpl-1" and request.user == "u"


def test_assistant_content_may_be_null():
    request = convert(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": None},
                                {"role": "user", "content": "b"}])
    assert [turn.text for turn in request.conversation] == ["a", "", "b"]


def test_omitted_sampling_fields_take_the_cards_defaults():
    assert convert().generation == GenerationParams()


def test_temperature_zero_is_greedy_and_the_other_fields_are_passed_on():
    generation = convert(temperature=0, top_p=0.5, seed=7, max_tokens=9).generation
    assert generation == GenerationParams(greedy=True, top_p=0.5, seed=7, max_new_tokens=9)
    assert convert(temperature=0.7).generation.temperature == 0.7


def test_max_completion_tokens_wins_over_the_older_max_tokens():
    assert convert(max_tokens=50, max_completion_tokens=5).generation.max_new_tokens == 5
    assert convert(max_tokens=50).generation.max_new_tokens == 50


def test_unknown_fields_are_ignored_and_n_of_one_is_fine():
    request = parse(n=1, frequency_penalty=0.3, logit_bias={"50256": -100}, tools=[], response_format=None,
                    messages=[{"role": "user", "content": "hi", "name": "ann"}])
    assert request.n == 1


@pytest.mark.parametrize(("stop", "texts"), [("END", ["END"]), (["a", "", "b"], ["a", "b"]), (None, [])])
def test_stop_is_a_text_or_a_list(stop, texts):
    assert parse(stop=stop).stop_texts == texts


@pytest.mark.parametrize(("fields", "param"), [
    ({"n": 2}, "n"),
    ({"stop": ["1", "2", "3", "4", "5"]}, "stop"),
    ({"stop": "x" * 300}, "stop"),
    ({"temperature": -1}, "temperature"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "t"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "messages.0.content"),
])
def test_a_request_that_cannot_be_answered_is_refused_naming_the_field(fields, param):
    with pytest.raises(Malformed) as caught:
        parse(**fields)
    assert caught.value.param is not None and caught.value.param.startswith(param)


@pytest.mark.parametrize(("fields", "param"), [
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 100_000}, "max_tokens"),
    ({"top_p": 0}, "top_p"),
    ({"seed": -1}, "seed"),
])
def test_sampling_limits_are_the_protocols_and_are_reported_by_the_clients_names(fields, param):
    assert refusal(**fields).param == param


def test_an_over_long_user_field_is_refused():
    with pytest.raises(Malformed) as caught:
        to_chat_request(parse(), request_id="r", user="u" * 300)
    assert caught.value.param == "user"


@pytest.mark.parametrize("messages", [
    [{"role": "system", "content": "only a system message"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! How"}],
])
def test_the_conversation_must_end_with_the_user(messages):
    error = refusal(messages=messages)
    assert error.param == "messages" and "from the user" in str(error)


@pytest.mark.parametrize("url", ["data:text/plain;base64,aGk=", "data:image/png,rawbytes", "ftp://host/x.png",
                                 "file:///etc/passwd", "cat.png"])
def test_an_image_url_that_is_not_base64_image_data_is_refused(url):
    error = refusal(messages=[{"role": "user", "content": [image_part(url)]}])
    assert error.param == "messages.0.content.0.image_url.url"


def test_images_are_taken_from_user_messages_only():
    error = refusal(messages=[{"role": "user", "content": "a"},
                              {"role": "assistant", "content": [image_part(DATA_URL)]},
                              {"role": "user", "content": "b"}])
    assert error.param == "messages.1.content"


def test_remote_urls_are_refused_unless_they_were_downloaded():
    url = "https://images.example/cat.png"
    messages = [{"role": "user", "content": [{"type": "text", "text": "?"}, image_part(url)]}]
    assert "not enabled" in str(refusal(messages=messages))
    fetched = ImageRef.from_bytes(PNG)
    assert convert(messages=messages, downloaded={url: fetched}).conversation[0].images == [fetched]


def test_remote_image_urls_lists_each_user_url_once_in_order():
    first, second = "http://a.example/1.png", "https://b.example/2.png"
    request = parse(messages=[
        {"role": "user", "content": [image_part(first), image_part(DATA_URL), image_part(second)]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [image_part(first)]},
    ])
    assert remote_image_urls(request) == [first, second]


def test_fairness_is_keyed_by_the_user_field_else_by_a_hash_of_the_api_key():
    assert fairness_key("ann", "Bearer sk-secret") == "ann"
    hashed = fairness_key(None, "Bearer sk-secret")
    assert hashed.startswith("api-key:") and "sk-secret" not in hashed
    assert hashed == fairness_key("", "Bearer sk-secret") != fairness_key(None, "Bearer sk-other")
    assert fairness_key(None, "") == "anonymous"
