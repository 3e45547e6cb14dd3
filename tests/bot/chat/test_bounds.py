"""Every path from a message to the model has a bound: one deadline per answer (a worker that stops answering
is given up on in time, and its replacement answers the next question), a bot-wide bound on answers in
progress (a crowd gets answers or "busy", never silence), and a context budget (a huge conversation sends
only what can fit, within the protocol's caps). Real SQLite, real worker processes, the real Slack adapter
against the fake Slack."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from bot.chat.conversations import conversation_key
from bot.chat.i18n import t
from bot.chat.images import ImageLimits, normalise_image
from bot.chat.messages import Failed, Final, Notice, Streaming
from bot.worker_client.supervisor import WorkerSupervisor
from model_worker.wire.protocol import (
    MAX_IMAGES_PER_REQUEST,
    MAX_REQUEST_TEXT_CHARS,
    MAX_TURN_CHARS,
    MAX_TURNS,
)
from tests.bot.adapters.slack.harness import running_chat
from tests.bot.chat.conftest import DISCORD_PROFILE, ChatHarness
from tests.support.crowd import Crowd
from tests.support.images import png
from tests.support.recording import RecordingWorker
from tests.support.shapes import dm

pytestmark = pytest.mark.timeout(300)


async def test_a_worker_that_stops_answering_mid_answer_is_given_up_on_within_the_deadline(
        harness_factory, tiny_weights: Path, tmp_path: Path) -> None:
    supervisor = WorkerSupervisor(weights=tiny_weights, socket_path=tmp_path / "w.sock", device="cpu",
                                  dtype="float32", restart_backoff_s=0.2, health_interval_s=0.5)
    async with supervisor:
        await supervisor.wait_ready()
        harness = await harness_factory(client_factory=lambda: supervisor.client, max_new_tokens=1536,
                                        max_in_flight_per_user=1, worker_request_timeout_s=6)
        replies = []
        async for reply in harness.service.handle(dm("discord", "Tell me a very long story"), DISCORD_PROFILE):
            replies.append(reply)
            if isinstance(reply, Streaming) and len(replies) == 2:  # mid-answer: it stops answering
                os.kill(supervisor.pid, signal.SIGSTOP)
        ending = replies[-1]
        assert isinstance(ending, Failed) and ending.code == "timeout" and ending.text == t("timeout", "en")
        assert "\n\n".join(ending.parts).endswith(t("timeout", "en"))

        await supervisor.wait_ready(restarts=1)  # the stuck worker was replaced
        again = await harness.send(dm("discord", "Are you back?"))
        assert isinstance(again[-1], Final), again  # the user's in-flight place was given back


async def test_a_crowd_of_image_questions_gets_answers_or_busy_notices_each_exactly_once(worker,
                                                                                     tmp_path: Path) -> None:
    recording = RecordingWorker(worker.client())
    async with running_chat(recording, tmp_path, max_new_tokens=4, max_in_flight_per_user=4,
                            rate_limit_burst=10) as chat:
        crowd = await Crowd.ask(chat.fake, questions=200, users=50)  # 4 photos from each user, all at once
        await chat.fake.wait_for(crowd.everyone_told, within_s=240)
        await asyncio.sleep(1)  # anything sent twice would arrive now
        results = crowd.results()
    await recording.close()
    assert all(len(result) == 1 for result in results), [r for r in results if len(r) != 1][:5]
    answered = [result[0] for result in results].count("answer")
    assert answered == len(recording.answers) and answered >= 8  # at least a full batch got through
    asked = [request.conversation[-1].text for request in recording.requests]
    assert len(asked) == len(set(asked)) >= answered, "no question reached the worker twice"


async def test_a_huge_conversation_sends_only_what_fits_within_the_caps(harness: ChatHarness) -> None:
    question = dm("discord", "first question")
    await harness.send(question)
    conversation = await harness.store.find_conversation(conversation_key(question))
    long_text = "wall of text " * 3077  # 40,001 characters
    for index in range(1000):  # 2,000 turns of 40,000 characters each
        await harness.store.add_turn(conversation.id, role="user", text=long_text, status="answered",
                                     platform_message_id=f"m{index}")
        await harness.store.add_turn(conversation.id, role="assistant", text=long_text, status="complete")

    replies = await harness.send(dm("discord", long_text))
    assert isinstance(replies[-2], Final), replies
    assert replies[-1] == Notice(t("message_cut", "en")), "the user is told only the start was read"
    request = harness.requests[-1]
    assert len(request.conversation) <= MAX_TURNS
    assert all(len(turn.text) <= MAX_TURN_CHARS for turn in request.conversation)
    assert sum(len(turn.text) for turn in request.conversation) <= MAX_REQUEST_TEXT_CHARS
    assert sum(len(turn.images) for turn in request.conversation) <= MAX_IMAGES_PER_REQUEST
    assert request.conversation[-1].text == long_text[:MAX_TURN_CHARS]


async def test_failed_and_stopped_questions_are_left_out_and_kept_turns_keep_their_images(
        harness: ChatHarness) -> None:
    first = dm("discord", "what is this?")
    await harness.send(first)
    conversation = await harness.store.find_conversation(conversation_key(first))
    image = normalise_image(png((10, 200, 30)), ImageLimits(10**8, 10**8, 4096))
    await harness.store.put_image(image.sha256, image.png, width=image.width, height=image.height)
    await harness.store.add_turn(conversation.id, role="user", text="look at this", status="answered",
                                 image_hashes=[image.sha256], platform_message_id="p1")
    await harness.store.add_turn(conversation.id, role="assistant", text="a green picture", status="complete")
    await harness.store.add_turn(conversation.id, role="user", text="this one failed", status="failed",
                                 platform_message_id="p2")
    await harness.store.add_turn(conversation.id, role="user", text="this one was stopped", status="cancelled",
                                 platform_message_id="p3")
    await harness.send(dm("discord", "and now?"))
    sent = harness.requests[-1].conversation
    assert [turn.text for turn in sent][-3:] == ["look at this", "a green picture", "and now?"]
    assert [len(turn.images) for turn in sent][-3:] == [1, 0, 0]

