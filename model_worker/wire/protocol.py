"""The wire protocol between the bot and the model worker: the one contract both sides import.

This module imports nothing heavy (pydantic only), so the bot can use it without torch.
Every default lives here once; the worker and the bot never restate them.

A chat request is POSTed as JSON to ``/v1/chat``; the answer is ``application/x-ndjson``, one
:data:`Event` per line, ending with exactly one ``done`` or ``error`` event.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

PROTOCOL_VERSION = 1
NDJSON = "application/x-ndjson"

#: The model's context window (GPT-NeoX ``max_position_embeddings``): prompt + new tokens must fit.
CONTEXT_LENGTH = 2048
#: Upper bound a client may ask for; the card's default is 512.
MAX_NEW_TOKENS_LIMIT = 1536

# Limits both sides must agree on, defined here once (the worker's flags and the bot's settings default to them).
#: Longest time one answer may take, queue included (seconds).
DEFAULT_REQUEST_TIMEOUT_S = 600.0
#: Requests that may wait beyond the running batch before new ones are told ``busy``.
DEFAULT_MAX_QUEUE = 64
#: Largest request body the worker reads (images travel base64-encoded inside it).
DEFAULT_MAX_BODY_BYTES = 64 * 2**20
#: The ``retry_after`` hint sent with ``busy`` (seconds).
BUSY_RETRY_AFTER_S = 5.0
#: Largest image file downloaded: the bot's attachments (``MAX_IMAGE_BYTES``) and the worker's opt-in
#: remote image URLs.
DEFAULT_MAX_IMAGE_BYTES = 20_000_000
#: Longest time one image download may take (seconds).
IMAGE_DOWNLOAD_TIMEOUT_S = 30.0

# Caps on one request: they bound the body, the worker's tokenizing and the prompt it fits. The bot sends only
# the tail of a conversation that fits within them (the model's context holds far less than this anyway).
#: Turns in one request.
MAX_TURNS = 512
#: Characters of one turn's text.
MAX_TURN_CHARS = 8_192
#: Characters of all turns' text together.
MAX_REQUEST_TEXT_CHARS = 16_384
#: Images in one request (each fills 32 of the context's 2,048 positions).
MAX_IMAGES_PER_REQUEST = 16


class ErrorCode(StrEnum):
    """Stable error codes carried by ``error`` events and used by clients to pick a message."""

    BUSY = "busy"  # the queue is full; retry after ``retry_after`` seconds
    BAD_REQUEST = "bad_request"  # the request does not follow this protocol
    BAD_IMAGE = "bad_image"  # an image could not be decoded (bad base64, not an image, too large)
    UNKNOWN_IMAGE = "unknown_image"  # an image referenced by hash is not held; resend with data
    CONTEXT_TOO_LONG = "context_too_long"  # the newest user turn alone does not fit the context
    TIMEOUT = "timeout"  # the request's deadline passed
    LOADING = "loading"  # the model is still loading
    UNAVAILABLE = "unavailable"  # the worker cannot be reached or died mid-request (client side)
    SHUTTING_DOWN = "shutting_down"  # the worker is stopping and takes no new work
    INTERNAL = "internal"  # anything else; the worker's log has the detail


class FinishReason(StrEnum):
    STOP = "stop"  # EOS, or the model began a new turn (which is cut off)
    LENGTH = "length"  # max_new_tokens or the context window was reached
    CANCELLED = "cancelled"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageRef(_Model):
    """An image in a turn: either its bytes (base64) or, once the worker holds it, its SHA-256."""

    data: str | None = None
    sha256: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageRef:
        if (self.data is None) == (self.sha256 is None):
            raise ValueError("an image needs exactly one of 'data' (base64) or 'sha256'")
        return self

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value)):
            raise ValueError("sha256 must be 64 lower-case hex digits")
        return value

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageRef:
        return cls(data=base64.b64encode(data).decode("ascii"))

    def decode(self) -> bytes:
        """The image bytes; raises ``ValueError`` on invalid base64 or a hash-only reference."""
        if self.data is None:
            raise ValueError("image is a hash reference, not data")
        try:
            return base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("image data is not valid base64") from exc


class Turn(_Model):
    role: Literal["user", "assistant"]
    text: str = Field("", max_length=MAX_TURN_CHARS)
    images: list[ImageRef] = Field(default_factory=list, max_length=MAX_IMAGES_PER_REQUEST)


class GenerationParams(_Model):
    """Sampling settings; the defaults are the model card's."""

    max_new_tokens: int = Field(512, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    greedy: bool = False
    temperature: float = Field(1.0, gt=0.0, le=5.0)
    top_p: float = Field(0.85, gt=0.0, le=1.0)
    top_k: int = Field(50, ge=0, le=65536)  # 0 disables top-k
    seed: int | None = Field(None, ge=0, lt=2**63)


class ChatRequest(_Model):
    request_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=128)
    user: str = Field("anonymous", max_length=256)  # opaque key used for fairness between users
    conversation: list[Turn] = Field(min_length=1, max_length=MAX_TURNS)
    generation: GenerationParams = Field(default_factory=GenerationParams)
    # A newest turn too long for the context on its own: "cut" answers its start (``done`` then says
    # ``question_cut``), "refuse" ends the request with ``context_too_long``.
    long_question: Literal["cut", "refuse"] = "cut"

    @model_validator(mode="after")
    def _ends_with_user(self) -> ChatRequest:
        if self.conversation[-1].role != "user":
            raise ValueError("the conversation must end with a user turn")
        return self

    @model_validator(mode="after")
    def _within_caps(self) -> ChatRequest:
        text = sum(len(turn.text) for turn in self.conversation)
        if text > MAX_REQUEST_TEXT_CHARS:
            raise ValueError(f"the conversation's text has {text} characters; at most {MAX_REQUEST_TEXT_CHARS} "
                             "are accepted (send only its most recent turns)")
        images = sum(len(turn.images) for turn in self.conversation)
        if images > MAX_IMAGES_PER_REQUEST:
            raise ValueError(f"the conversation has {images} images; at most {MAX_IMAGES_PER_REQUEST} are accepted")
        return self

    def image_hashes(self) -> list[str]:
        return [img.sha256 for turn in self.conversation for img in turn.images if img.sha256]


# ---- events streamed back -------------------------------------------------------------------------


class QueuedEvent(_Model):
    type: Literal["queued"] = "queued"
    position: int  # 1 = next to run


class StartedEvent(_Model):
    type: Literal["started"] = "started"


class RestartedEvent(_Model):
    """The job was taken over by another worker and starts again from the beginning."""

    type: Literal["restarted"] = "restarted"
    attempt: int = 1


class TokenEvent(_Model):
    type: Literal["token"] = "token"
    text: str


class Usage(_Model):
    prompt_tokens: int
    completion_tokens: int


class DoneEvent(_Model):
    model_config = ConfigDict(extra="allow", frozen=True)

    type: Literal["done"] = "done"
    text: str
    finish_reason: FinishReason
    usage: Usage
    timings: dict[str, float] = Field(default_factory=dict)
    question_cut: bool | None = None  # the question alone was too long for the model: only its start was read


class ErrorEvent(_Model):
    model_config = ConfigDict(extra="allow", frozen=True)

    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    retry_after: float | None = None  # seconds, for busy
    hashes: list[str] | None = None  # for unknown_image: the hashes to resend with data


Event = Annotated[
    QueuedEvent | StartedEvent | RestartedEvent | TokenEvent | DoneEvent | ErrorEvent,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(line: str | bytes) -> Event:
    """Parse one NDJSON line into a typed event (raises ``pydantic.ValidationError``)."""
    return EVENT_ADAPTER.validate_json(line)


def dump_event(event: Event) -> bytes:
    """One NDJSON line (with its newline) for an event."""
    return event.model_dump_json(exclude_none=True).encode() + b"\n"


class ReadyInfo(_Model):
    """Body of ``GET /readyz``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    ready: bool
    protocol_version: int = PROTOCOL_VERSION
    model: str | None = None
    device: str | None = None
    dtype: str | None = None
    progress: str | None = None  # what loading is doing, while not ready
    max_batch_size: int | None = None  # sequences decoded together
    max_queue: int | None = None  # requests that may wait beyond the batch before ``busy``

    @property
    def capacity(self) -> int | None:
        """Requests the worker takes at once (running plus waiting), when it says."""
        if self.max_batch_size is None:
            return None
        return self.max_batch_size + (self.max_queue or 0)


class HealthInfo(_Model):
    """Body of ``GET /healthz``: alive and healthy (200), or alive but stuck (503, with the reason)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    alive: bool = True
    healthy: bool = True
    reason: str | None = None


def protocol_mismatch(info: ReadyInfo, *, where: str) -> str | None:
    """A start-up error message when the worker at ``where`` speaks another protocol version, else None."""
    if info.protocol_version == PROTOCOL_VERSION:
        return None
    return (f"the worker at {where} speaks protocol version {info.protocol_version}, but this bot speaks "
            f"version {PROTOCOL_VERSION}: run the same release of the bot and the worker")
