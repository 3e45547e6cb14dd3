"""OpenAI chat-completions requests, and their translation into the worker's :class:`ChatRequest`.

Pure: no I/O. The model has no system slot in its prompt, so ``system`` and ``developer`` messages are
accepted and left out; ``user`` and ``assistant`` messages become turns (text parts joined by a line
break, which the prompt turns into a space). Images come as ``data:image/...;base64,...`` URLs, or as
remote ``http(s)`` URLs that the front end has already downloaded (when the operator allows them).
Sampling fields the client leaves out take the model card's defaults (:class:`GenerationParams`).
Unknown fields are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from model_worker.serve.front_end import Malformed, Refusal, validated
from model_worker.wire.protocol import (
    MAX_REQUEST_TEXT_CHARS,
    MAX_TURN_CHARS,
    ChatRequest,
    ErrorCode,
    ErrorEvent,
    GenerationParams,
    ImageRef,
    Turn,
)

#: The one model this worker serves, as ``GET /v1/models`` lists it and requests must name it.
MODEL_ID = "rinna/bilingual-gpt-neox-4b-minigpt4"
#: Stop texts one request may give (OpenAI's own limit), and the longest one.
MAX_STOP_TEXTS = 4
MAX_STOP_CHARS = 256

_DATA_URL_PREFIX = "data:image/"
_REMOTE_SCHEMES = ("http://", "https://")
# Our field names in validation errors, as the client spelt them ("" leaves a level out).
_CLIENT_NAMES = {"conversation": "messages", "generation": "", "max_new_tokens": "max_tokens"}


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImageUrl(_Lenient):
    url: str
    detail: str | None = None  # accepted; the model always sees 224 x 224 pixels


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


StopText = Annotated[str, Field(max_length=MAX_STOP_CHARS)]


class CompletionRequest(_Lenient):
    """The fields of ``POST /v1/chat/completions`` this worker reads."""

    model: str = MODEL_ID
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = None
    seed: int | None = None
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOP_TEXTS)] | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @property
    def stop_texts(self) -> list[str]:
        """The stop texts, as a list without empty ones."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [stop for stop in stops if stop]

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


def parse_completion_request(body: bytes) -> CompletionRequest:
    """The request body as a :class:`CompletionRequest`; :class:`Malformed` when it is not one."""
    request = validated(CompletionRequest, body)
    if request.n not in (None, 1):
        raise Malformed("n must be 1: this worker answers with one choice", param="n")
    return request


def remote_image_urls(request: CompletionRequest) -> list[str]:
    """The ``http(s)`` image URLs of the request's user messages, in order, once each."""
    urls = [part.image_url.url for message in request.messages
            if message.role == "user" and isinstance(message.content, list)
            for part in message.content if isinstance(part, ImagePart)]
    return list(dict.fromkeys(url for url in urls if url.startswith(_REMOTE_SCHEMES)))


def fairness_key(user: str | None, authorization: str) -> str:
    """Whom the scheduler shares the device fairly between: the request's ``user`` field, else a hash of
    the API key in the ``Authorization`` header (never the key itself), else everyone anonymous alike."""
    if user:
        return user
    key = authorization.removeprefix("Bearer ").strip()
    if key:
        return f"api-key:{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    return ChatRequest.model_fields["user"].default


def to_chat_request(request: CompletionRequest, *, request_id: str, user: str,
                    downloaded: Mapping[str, ImageRef] | None = None) -> ChatRequest:
    """The worker's request for a chat completion; ``downloaded`` holds the remote images fetched for it.
    Raises :class:`Malformed` naming the offending field."""
    _check_length(request)
    turns = [_turn(message, index, downloaded or {}) for index, message in enumerate(request.messages)
             if message.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user":
        raise Malformed("the last user or assistant message must be from the user", param="messages")
    fields = {"request_id": request_id, "user": user, "conversation": turns,
              "generation": _generation(request), "long_question": "refuse"}
    return validated(ChatRequest, fields, names=_CLIENT_NAMES)


class PromptTooLong(Refusal):
    """Messages longer than the worker takes (HTTP 400, ``context_length_exceeded``), as OpenAI refuses a
    prompt over the context: an API client expects a refusal, not a silently shortened question."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorEvent(code=ErrorCode.CONTEXT_TOO_LONG, message=message))


def _check_length(request: CompletionRequest) -> None:
    texts = [_text_of(message) for message in request.messages if message.role in ("user", "assistant")]
    longest, total = max(map(len, texts), default=0), sum(map(len, texts))
    if longest > MAX_TURN_CHARS or total > MAX_REQUEST_TEXT_CHARS:
        raise PromptTooLong(f"the messages are longer than this model's context can hold ({total} characters, "
                            f"the longest {longest}; at most {MAX_REQUEST_TEXT_CHARS} in all and "
                            f"{MAX_TURN_CHARS} per message)")


def _text_of(message: Message) -> str:
    if isinstance(message.content, str) or message.content is None:
        return message.content or ""
    return "\n".join(part.text for part in message.content if isinstance(part, TextPart))


def _generation(request: CompletionRequest) -> GenerationParams:
    """The sampling fields the client gave; the others keep :class:`GenerationParams`' defaults."""
    max_tokens = request.max_tokens if request.max_completion_tokens is None else request.max_completion_tokens
    given = {"max_new_tokens": max_tokens, "top_p": request.top_p, "seed": request.seed}
    if request.temperature == 0:
        given["greedy"] = True
    else:
        given["temperature"] = request.temperature
    fields = {name: value for name, value in given.items() if value is not None}
    return validated(GenerationParams, fields, names=_CLIENT_NAMES)


def _turn(message: Message, index: int, downloaded: Mapping[str, ImageRef]) -> Turn:
    if isinstance(message.content, str) or message.content is None:
        return Turn(role=message.role, text=message.content or "")
    image_parts = [(at, part) for at, part in enumerate(message.content) if isinstance(part, ImagePart)]
    if image_parts and message.role != "user":
        raise Malformed("images are accepted in user messages only", param=f"messages.{index}.content")
    images = [_image(part.image_url.url, f"messages.{index}.content.{at}.image_url.url", downloaded)
              for at, part in image_parts]
    return Turn(role=message.role, text=_text_of(message), images=images)


def _image(url: str, param: str, downloaded: Mapping[str, ImageRef]) -> ImageRef:
    if url.startswith(_REMOTE_SCHEMES):
        if url not in downloaded:
            raise Malformed("remote image URLs are not enabled on this worker; send the image as a "
                            "data:image/...;base64,... URL", param=param)
        return downloaded[url]
    header, comma, data = url.partition(",")
    if not (header.startswith(_DATA_URL_PREFIX) and header.endswith(";base64") and comma):
        raise Malformed("an image URL must be data:image/...;base64,... (or http(s) where enabled)",
                        param=param)
    return ImageRef(data=data)
