"""Socket Mode scenarios the bot answers without the model: unusable files, access rules, commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.adapters.slack import run_slack
from bot.chat.i18n import t
from bot.chat.service import ChatService
from bot.chat.store import ConversationKey, Store
from bot.settings import SettingsError
from bot.worker_client.http import HttpWorkerClient
from tests.bot.adapters.slack.harness import mention_event, message_event, running_bot, slack_settings
from tests.fakes.slack_fake import BOT_TOKEN, TEAM_ID, FakeSlack, command_envelope, events_envelope

CHANNEL = "C0GENERAL"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


async def test_non_image_file_is_refused_before_download(fake: FakeSlack, tmp_path: Path,
                                                         idle_worker: HttpWorkerClient) -> None:
    async with running_bot(fake, slack_settings(fake, tmp_path), idle_worker):
        entry = fake.add_file("notes.txt", "text/plain", b"hello")
        await fake.push(events_envelope(mention_event("", ts="1.000100", files=[entry]), event_id="Ev1"))
        await fake.wait_for(lambda: fake.thread_posts(CHANNEL, "1.000100"))
    (notice,) = fake.thread_posts(CHANNEL, "1.000100")
    assert "notes.txt" in notice.args["text"] and "PNG" in notice.args["text"]
    assert fake.file_requests == []
    assert {"envelope_id": "env-Ev1-0"} in fake.acks


async def test_file_without_access_explains_scope_and_sharing(fake: FakeSlack, tmp_path: Path,
                                                              idle_worker: HttpWorkerClient) -> None:
    fake.user_locales["U0ALICE"] = "ja-JP"
    async with running_bot(fake, slack_settings(fake, tmp_path), idle_worker):
        entry = fake.add_file("cat.png", "image/png", PNG, readable=False)
        await fake.push(events_envelope(mention_event("", ts="1.000200", files=[entry]), event_id="Ev2"))
        await fake.wait_for(lambda: fake.thread_posts(CHANNEL, "1.000200"))
    (notice,) = fake.thread_posts(CHANNEL, "1.000200")
    text = notice.args["text"]
    assert text.startswith("cat.png") and t("slack_file_access_hint", "ja") in text
    assert "files:read" in text
    assert fake.file_requests[0]["authorization"] == f"Bearer {BOT_TOKEN}"


async def test_user_not_on_the_allow_list_gets_a_private_refusal(fake: FakeSlack, tmp_path: Path,
                                                                 idle_worker: HttpWorkerClient) -> None:
    settings = slack_settings(fake, tmp_path, allowed_users="U0BOSS", notify_not_allowed=True)
    async with running_bot(fake, settings, idle_worker):
        entry = fake.add_file("cat.png", "image/png", PNG)
        await fake.push(events_envelope(mention_event("what is this?", ts="1.000300", files=[entry]),
                                        event_id="Ev3"))
        await fake.wait_for(lambda: fake.calls_to("chat.postEphemeral"))
    (refusal,) = fake.calls_to("chat.postEphemeral")
    assert refusal.args == {"channel": CHANNEL, "user": "U0ALICE", "text": t("not_allowed", "en"),
                            "thread_ts": "1.000300"}
    assert fake.calls_to("chat.postMessage") == [] and fake.file_requests == []


async def test_help_in_a_dm_is_answered_at_top_level(fake: FakeSlack, tmp_path: Path,
                                                     idle_worker: HttpWorkerClient) -> None:
    async with running_bot(fake, slack_settings(fake, tmp_path), idle_worker):
        await fake.push(events_envelope(message_event("help", ts="1.000400", channel="D0ALICE",
                                                      channel_type="im"), event_id="Ev4"))
        await fake.wait_for(lambda: fake.calls_to("chat.postMessage"))
    (post,) = fake.calls_to("chat.postMessage")
    assert post.args["channel"] == "D0ALICE" and "thread_ts" not in post.args
    assert post.args["text"].startswith(t("help", "en", max_images=0, accepted="", max_mb=0)[:40])


async def test_slash_command_in_japanese_answers_privately(fake: FakeSlack, tmp_path: Path,
                                                           idle_worker: HttpWorkerClient) -> None:
    fake.user_locales["U0HANAKO"] = "ja-JP"
    async with running_bot(fake, slack_settings(fake, tmp_path), idle_worker):
        envelope = command_envelope(fake, text="ヘルプ", user="U0HANAKO", channel=CHANNEL)
        await fake.push(envelope)
        await fake.wait_for(lambda: fake.responses and fake.acks)
    assert fake.responses[0]["text"].startswith(t("help", "ja", max_images=0, accepted="", max_mb=0)[:20])
    assert fake.responses[0]["response_type"] == "ephemeral"
    assert fake.acks == [{"envelope_id": envelope["envelope_id"]}]


async def _turn_texts(store: Store, key: ConversationKey) -> list[str]:
    conversation = await store.find_conversation(key)
    return [turn.text for turn in await store.list_turns(conversation.id)] if conversation else []


async def test_slash_reset_resets_a_dm_but_in_a_channel_changes_nothing_and_says_so(
        fake: FakeSlack, tmp_path: Path, idle_worker: HttpWorkerClient) -> None:
    fake.user_locales["U0HANAKO"] = "ja-JP"
    thread = ConversationKey("slack", TEAM_ID, CHANNEL, "1.000700")
    dm = ConversationKey("slack", "", "D0ALICE", "dm")
    async with running_bot(fake, slack_settings(fake, tmp_path), idle_worker) as bot:
        # two conversations with a stored turn each (the model is not reachable: the turn stays)
        await fake.push(events_envelope(mention_event("about the thread", ts="1.000700"), event_id="Ev7"))
        await fake.wait_for(lambda: len(fake.calls_to("reactions.remove")) == 1)
        await fake.push(events_envelope(message_event("about the DM", ts="1.000800", channel="D0ALICE",
                                                      channel_type="im"), event_id="Ev8"))
        await fake.wait_for(lambda: len(fake.calls_to("reactions.remove")) == 2)
        for text, user, channel in (("reset", "U0ALICE", CHANNEL), ("リセット", "U0HANAKO", CHANNEL),
                                    ("reset", "U0ALICE", "D0ALICE")):
            await fake.push(command_envelope(fake, text=text, user=user, channel=channel))
        await fake.wait_for(lambda: len(fake.responses) == 3 and len(fake.acks) == 5)
        thread_turns, dm_turns = await _turn_texts(bot.store, thread), await _turn_texts(bot.store, dm)
    assert sorted(response["text"] for response in fake.responses) == sorted(
        [t("reset_where", "en"), t("reset_where", "ja"), t("reset_done", "en")])
    assert thread_turns == ["about the thread"], "a slash command in a channel reset nothing"
    assert dm_turns == [], "in a DM the conversation starts over"


async def test_channel_chatter_without_mention_is_ignored(fake: FakeSlack, tmp_path: Path,
                                                          idle_worker: HttpWorkerClient) -> None:
    async with running_bot(fake, slack_settings(fake, tmp_path), idle_worker):
        await fake.push(events_envelope(message_event("lunch?", ts="1.000500"), event_id="Ev5"))
        await fake.push(events_envelope(mention_event("help", ts="1.000600"), event_id="Ev6"))
        await fake.wait_for(lambda: fake.calls_to("chat.postMessage"))
    (post,) = fake.calls_to("chat.postMessage")
    assert post.args["thread_ts"] == "1.000600"
    assert [call.args["user"] for call in fake.calls_to("users.info")] == ["U0ALICE"]


async def test_refused_tokens_stop_start_up_naming_the_variable(fake: FakeSlack, tmp_path: Path,
                                                                idle_worker: HttpWorkerClient) -> None:
    store = await Store.open(tmp_path / "bot.sqlite3")
    try:
        service = ChatService(settings=slack_settings(fake, tmp_path), store=store, worker=idle_worker)
        for variable, override in (("SLACK_BOT_TOKEN", {"slack_bot_token": "xoxb-revoked"}),
                                   ("SLACK_APP_TOKEN", {"slack_app_token": "xapp-revoked"})):
            with pytest.raises(SettingsError) as refused:
                await run_slack(slack_settings(fake, tmp_path, **override), service)
            assert refused.value.message.startswith(variable) and "revoked" not in refused.value.message
    finally:
        await store.close()
    assert fake.acks == [] and fake.calls_to("chat.postMessage") == []
