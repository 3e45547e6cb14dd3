"""End to end: the unmodified Bolt app in Socket Mode, the real chat service and store, a real worker
process on tiny random weights, and the fake Slack recording what the bot sends."""

from __future__ import annotations

import json
from pathlib import Path

from bot.adapters.slack.listeners import SLACK_PROFILE
from bot.adapters.slack.views import STOP_ACTION_ID, to_mrkdwn
from bot.chat.i18n import t
from bot.chat.splitting import prepare_parts
from bot.chat.store import ConversationKey, Store
from bot.worker_client.http import HttpWorkerClient
from tests.bot.adapters.slack.harness import mention_event, message_event, running_bot, slack_settings
from tests.fakes.slack_fake import (
    BOT_TOKEN,
    BOT_USER_ID,
    TEAM_ID,
    ApiCall,
    FakeSlack,
    action_envelope,
    events_envelope,
)
from tests.support.images import png

CHANNEL = "C0GENERAL"
PLACEHOLDERS = {t("placeholder_waiting", "en"), t("queued", "en", position=1), t("started", "en")}


async def _turns(store: Store, root_ts: str) -> list:
    conversation = await store.find_conversation(ConversationKey("slack", TEAM_ID, CHANNEL, root_ts))
    assert conversation is not None
    return await store.list_turns(conversation.id)


def _expected_messages(answer: str) -> list[str]:
    parts = prepare_parts(answer, limit=SLACK_PROFILE.max_message_chars, markup="slack")
    return [to_mrkdwn(part) for part in parts if part.strip()]


def _assert_answer_shown(fake: FakeSlack, posts: list[ApiCall], answer: str) -> None:
    assert posts[0].args["text"] in PLACEHOLDERS
    assert STOP_ACTION_ID in json.dumps(posts[0].args["blocks"])  # a Stop button while working
    shown = [fake.shown_text(CHANNEL, post.result["ts"]) for post in posts]
    assert shown == _expected_messages(answer)
    final = fake.calls_to("chat.update", ts=posts[-1].result["ts"])[-1]
    assert STOP_ACTION_ID not in json.dumps(final.args["blocks"])  # and none once finished


async def test_mention_with_image_then_follow_up_in_thread(fake: FakeSlack, tmp_path: Path,
                                                           live_worker: HttpWorkerClient) -> None:
    root = "3.000100"
    async with running_bot(fake, slack_settings(fake, tmp_path), live_worker) as bot:
        entry = fake.add_file("cat.png", "image/png", png((200, 40, 40), size=(40, 30)))
        question = "What is in this picture?"
        # one post that mentions the bot arrives as app_mention and as message.channels
        await fake.push(events_envelope(mention_event(question, ts=root, files=[entry]), event_id="EvA1"))
        await fake.push(events_envelope(message_event(f"<@{BOT_USER_ID}> {question}", ts=root, files=[entry]),
                                        event_id="EvA2"))
        await fake.wait_for(lambda: fake.calls_to("reactions.remove"))
        first_turns = await _turns(bot.store, root)

        await fake.push(events_envelope(message_event("And its colour?", ts="3.000500", thread_ts=root),
                                        event_id="EvA3"))
        await fake.wait_for(lambda: len(fake.calls_to("reactions.remove")) == 2)
        turns = await _turns(bot.store, root)

    assert fake.file_requests == [{"path": f"/files/{entry['id']}", "authorization": f"Bearer {BOT_TOKEN}"}]
    assert [turn.role for turn in first_turns] == ["user", "assistant"]
    assert first_turns[0].text == question and len(first_turns[0].image_hashes) == 1
    posts = fake.thread_posts(CHANNEL, root)
    first_answer = [post for post in posts if post.received_at < fake.calls_to("reactions.remove")[0].received_at]
    _assert_answer_shown(fake, first_answer, first_turns[1].text)
    # the pace of edits: tests/chat/test_answer_layout.py::test_streamed_edits_are_paced_per_message
    assert [(c.args["name"], c.args["timestamp"]) for c in fake.calls_to("reactions.add")] == [
        ("eyes", root), ("eyes", "3.000500")]

    # the follow-up continued the same conversation, and was answered in the same thread
    assert [turn.role for turn in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[2].text == "And its colour?"
    _assert_answer_shown(fake, posts[len(first_answer):], turns[3].text)


async def test_redelivered_event_is_answered_once(fake: FakeSlack, tmp_path: Path,
                                                  live_worker: HttpWorkerClient) -> None:
    root = "4.000100"
    event = mention_event("Describe a sunset.", ts=root)
    async with running_bot(fake, slack_settings(fake, tmp_path), live_worker):
        await fake.push(events_envelope(event, event_id="EvR1"))
        await fake.push(events_envelope(event, event_id="EvR1", retry_attempt=1))  # while answering
        await fake.wait_for(lambda: fake.calls_to("reactions.remove"))
        await fake.push(events_envelope(event, event_id="EvR1", retry_attempt=2))  # after answering
        await fake.push(events_envelope(mention_event("help", ts="4.000900"), event_id="EvR2"))
        await fake.wait_for(lambda: fake.thread_posts(CHANNEL, "4.000900"))
    acked = {ack["envelope_id"] for ack in fake.acks}
    assert {"env-EvR1-0", "env-EvR1-1", "env-EvR1-2"} <= acked
    posts = fake.thread_posts(CHANNEL, root)
    assert len([post for post in posts if post.args["text"] in PLACEHOLDERS]) == 1
    assert len(fake.calls_to("reactions.add")) == 1


def _stop_value(call: ApiCall) -> str:
    """The Stop button's value on a posted message."""
    blocks = call.args["blocks"]
    blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
    return next(element["value"] for block in blocks if block["type"] == "actions"
                for element in block["elements"] if element["action_id"] == STOP_ACTION_ID)


async def test_stop_button_ends_a_running_answer(fake: FakeSlack, tmp_path: Path,
                                                 live_worker: HttpWorkerClient) -> None:
    root = "6.000100"
    settings = slack_settings(fake, tmp_path, max_new_tokens=1536)
    async with running_bot(fake, settings, live_worker) as bot:
        await fake.push(events_envelope(mention_event("Tell me a very long story.", ts=root), event_id="EvS1"))
        await fake.wait_for(lambda: fake.calls_to("chat.update"))  # text is streaming in
        placeholder = fake.thread_posts(CHANNEL, root)[0]
        await fake.push(action_envelope(fake, action_id=STOP_ACTION_ID, value=_stop_value(placeholder),
                                        user="U0ALICE", channel=CHANNEL, message_ts=placeholder.result["ts"],
                                        thread_ts=root))
        await fake.wait_for(lambda: fake.calls_to("reactions.remove"))
        turns = await _turns(bot.store, root)
    shown = [fake.shown_text(CHANNEL, post.result["ts"]) for post in fake.thread_posts(CHANNEL, root)]
    assert shown[-1].endswith(t("cancelled_suffix", "en"))
    assert [(turn.role, turn.status) for turn in turns] == [("user", "cancelled")]
    assert fake.calls_to("chat.postEphemeral") == []
