"""The whole bot on both platforms when the network and the platform are unkind: photos that arrive in
pieces over seconds, files far over the size cap, a download that breaks off, and a connection dropped in
the middle of an answer with the question delivered again afterwards.

Each test runs once per platform: the unmodified discord.py or slack_bolt client against the local fake,
the real chat service on SQLite, and the real worker process on tiny weights; the assertions read what
the fake received and what reached the worker.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from PIL import Image

from bot.chat.failures import rejected_image_text
from bot.chat.images import Rejected
from tests.bot.adapters.discord import harness as discord_harness
from tests.bot.adapters.slack import harness as slack_harness
from tests.fakes.bodies import Delivery, SentBody
from tests.support.recording import RecordingWorker
from tests.support.waiting import eventually

MAX_IMAGE_BYTES = 20_000_000  # the default cap


class Chat(Protocol):
    """What both running-bot drivers offer (``DiscordChat``, ``SlackChat``)."""

    platform: str
    worker: RecordingWorker

    def image(self, name: str, data: bytes, *, declared_size: int | None = None,
              delivery: Delivery | None = None) -> dict[str, Any]: ...
    def body_sent(self, image: dict[str, Any]) -> SentBody: ...
    async def ask(self, text: str, images: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]: ...
    async def answer(self, question: dict[str, Any], *, answers: int = 1) -> list[str]: ...
    def strike_mid_answer(self, question: dict[str, Any], *, graceful: bool = True) -> None: ...
    def reconnected(self) -> bool: ...
    def answer_posts(self, question: dict[str, Any]) -> int: ...
    def shows(self, answer: str) -> list[str]: ...


@pytest.fixture(params=["discord", "slack"])
async def chat(request: pytest.FixtureRequest, worker, tmp_path: Path) -> AsyncIterator[Chat]:
    recording = RecordingWorker(worker.client())
    harness = discord_harness if request.param == "discord" else slack_harness
    try:
        async with harness.running_chat(recording, tmp_path, max_new_tokens=64) as running:
            yield running
    finally:
        await recording.close()


def noise_png(side: int, *, seed: int = 0) -> bytes:
    """A photo-sized PNG: random pixels do not compress, so ``side`` 1,290 gives about 5 MB."""
    pixels = random.Random(seed).randbytes(side * side * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def pixels_of(data: bytes) -> tuple[tuple[int, int], str]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size, hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


async def test_a_5_mb_photo_arriving_in_pieces_over_2_s_reaches_the_worker_whole(chat: Chat) -> None:
    photo = noise_png(1290)
    assert 4_500_000 < len(photo) < 6_000_000
    image = chat.image("photo.png", photo, delivery=Delivery.spread_over(len(photo), 2.0, chunk_bytes=16 * 1024))
    question = await chat.ask("What is in this photo?", (image,))
    await chat.answer(question)

    sent = chat.body_sent(image)
    assert sent.complete and sent.sent == len(photo)
    [received] = chat.worker.requests[0].conversation[-1].images
    assert pixels_of(received.decode()) == pixels_of(photo), "every pixel, at its true size"


async def test_a_30_mb_file_is_refused_as_too_large_without_reading_it_to_the_end(chat: Chat) -> None:
    body = b"\x89PNG\r\n\x1a\n" + bytes(30_000_000)
    image = chat.image("huge.png", body, declared_size=1_000_000,  # the metadata lies: only the body tells
                       delivery=Delivery(chunk_bytes=64 * 1024, pause_s=0.0, declare_length=False))
    question = await chat.ask("And this one?", (image,))
    shown = await chat.answer(question)

    assert shown[0] == rejected_image_text(Rejected("huge.png", "too_large"), "en", max_bytes=MAX_IMAGE_BYTES,
                                           max_pixels=50_000_000)
    sent = chat.body_sent(image)
    assert not sent.complete and sent.sent < len(body), "the download stopped past the cap"
    assert chat.worker.requests[0].conversation[-1].images == [], "the question is still answered"


async def test_a_download_that_breaks_off_is_a_notice_about_that_file_only(chat: Chat) -> None:
    good, broken = noise_png(64, seed=1), noise_png(400, seed=2)
    images = (chat.image("good.png", good),
              chat.image("broken.png", broken, delivery=Delivery(chunk_bytes=16 * 1024, break_after=64 * 1024)))
    question = await chat.ask("Compare these", images)
    shown = await chat.answer(question)

    assert shown[0] == rejected_image_text(Rejected("broken.png", "fetch_failed"), "en",
                                           max_bytes=MAX_IMAGE_BYTES, max_pixels=50_000_000)
    [received] = chat.worker.requests[0].conversation[-1].images
    assert pixels_of(received.decode()) == pixels_of(good)


@pytest.mark.parametrize("graceful", [True, False], ids=["graceful", "abrupt"])
async def test_a_disconnect_mid_answer_loses_nothing_and_answers_once(chat: Chat, graceful: bool,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Graceful: Discord RESUMEs the session, Slack announces ``disconnect``. Abrupt: Discord invalidates
    the session (a new IDENTIFY), Slack's connection just drops. Either way the question comes again."""
    caplog.set_level(logging.INFO, logger="bot.chat.service")
    question = await chat.ask("Tell me about the sea")
    chat.strike_mid_answer(question, graceful=graceful)
    shown = await chat.answer(question)
    await eventually(lambda: "delivered again" in caplog.text, within=30)  # it came again, and was recognised

    assert chat.reconnected()
    assert len(chat.worker.requests) == 1, "the question went to the model once"
    [done] = chat.worker.answers
    assert shown == chat.shows(done.text), "the whole answer, completed after the reconnect"
    assert chat.answer_posts(question) == len(shown), "no second placeholder or answer"
