"""No message is answered twice: the bounded memory of deliveries, and the service using it."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from bot.chat.dedup import RecentDeliveries
from bot.chat.messages import Final
from tests.bot.chat.conftest import SLACK_PROFILE, ChatHarness
from tests.support.shapes import discord_mention, slack_mention


def test_a_key_seen_before_is_not_fresh_and_old_keys_are_forgotten() -> None:
    deliveries = RecentDeliveries(capacity=3)
    assert deliveries.first_time("slack:C1:1.1")
    assert not deliveries.first_time("slack:C1:1.1")
    assert not deliveries.first_time("other", "slack:C1:1.1")  # any known key makes it a repeat
    assert deliveries.first_time("slack:C1:9.9")
    for n in range(5):  # old keys are forgotten past the capacity
        deliveries.first_time(f"x{n}")
    assert deliveries.first_time("slack:C1:1.1")


async def test_a_message_delivered_twice_at_once_is_answered_once(harness: ChatHarness) -> None:
    question = discord_mention("Describe a sunset")
    first, second = await asyncio.gather(harness.send(question), harness.send(question))
    answered = [replies for replies in (first, second) if replies]
    assert len(answered) == 1 and isinstance(answered[0][-1], Final)
    assert len(harness.requests) == 1


async def test_the_mention_and_message_events_of_one_slack_post_are_one_message(harness: ChatHarness) -> None:
    as_mention = slack_mention("What is this?")
    as_message = replace(as_mention, mentioned=False)  # the message.channels twin: same channel and ts
    assert isinstance((await harness.send(as_mention, SLACK_PROFILE))[-1], Final)
    assert await harness.send(as_message, SLACK_PROFILE) == []
    assert len(harness.requests) == 1


async def test_after_a_restart_the_store_still_knows_the_message(harness: ChatHarness) -> None:
    question = discord_mention("Remember me")
    await harness.send(question)
    await harness.restart()  # a new process: the in-memory record is gone, the turn is stored
    assert await harness.send(question) == []
    assert len(harness.requests) == 1
