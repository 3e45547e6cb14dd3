"""Discord refusing things the bot needs: thread permissions, posting at all, and access rules that DMs
must not get around. The unmodified discord.py client against the fake, a real service and worker."""

from __future__ import annotations

import logging

import pytest

from bot.chat.failures import not_allowed_text
from bot.chat.i18n import t
from bot.chat.splitting import prepare_parts
from tests.bot.adapters.discord.harness import running_bot, settled_answer
from tests.fakes.discord_fake import FakeDiscord

MISSING_PERMISSIONS = {"status": 403, "code": 50013, "message": "Missing Permissions"}


def shown(text: str) -> list[str]:
    return list(prepare_parts(text, limit=2000, markup="discord"))


async def test_without_thread_permission_the_answer_is_a_reply_with_one_notice(fake_discord: FakeDiscord,
                                                                               recording_worker, tmp_path):
    fake, worker = fake_discord, recording_worker
    fake.refuse("POST", r"/channels/\d+/messages/\d+/threads", **MISSING_PERMISSIONS)
    async with running_bot(fake, worker, tmp_path):
        question = await fake.post_user_message("What is a thread?", mention_bot=True)
        messages = await fake.wait_until(lambda: worker.answers and settled_answer(fake, fake.channel_id)
                                         and fake.bot_messages(fake.channel_id))

    notice, *answer = messages
    assert notice["content"] == t("thread_refused", "en")
    assert [m["content"] for m in answer] == shown(worker.answers[0].text)
    for message in (notice, answer[0]):  # both quote the question in the channel
        assert message["message_reference"]["message_id"] == question["id"]
    assert not fake.threads, "no thread exists"


async def test_when_posting_in_the_new_thread_is_refused_the_answer_moves_to_the_channel(
        fake_discord: FakeDiscord, recording_worker, tmp_path):
    fake, worker = fake_discord, recording_worker
    fake.refuse("POST", rf"/channels/(?!{fake.channel_id}/)\d+/messages", **MISSING_PERMISSIONS)
    async with running_bot(fake, worker, tmp_path):
        question = await fake.post_user_message("Where will you answer?", mention_bot=True)
        notice, *answer = await fake.wait_until(lambda: worker.answers and settled_answer(fake, fake.channel_id))

    assert int(question["id"]) in fake.threads, "the thread was opened"
    assert fake.bot_messages(int(question["id"])) == []
    assert notice == t("thread_refused", "en")
    assert answer == shown(worker.answers[0].text)


async def test_a_channel_where_the_bot_may_not_post_gets_one_log_line_and_nothing_breaks(
        fake_discord: FakeDiscord, recording_worker, tmp_path, caplog):
    fake, worker = fake_discord, recording_worker
    caplog.set_level(logging.INFO)
    fake.refuse("POST", rf"/channels/{fake.channel_id}/messages(/\d+/threads)?", **MISSING_PERMISSIONS)
    async with running_bot(fake, worker, tmp_path):
        await fake.post_user_message("Can you hear me?", mention_bot=True)
        await fake.post_user_message("And here?", channel_id=fake.dm_channel_id)  # comes after; answered
        await fake.wait_until(lambda: worker.answers and settled_answer(fake, fake.dm_channel_id))

    failures = [r for r in caplog.records if r.name == "bot.adapters.reporting"]
    assert len(failures) == 1 and "50013" in failures[0].getMessage() and failures[0].exc_info is None
    assert [request.conversation[-1].text for request in worker.requests] == ["And here?"]
    assert "Ignoring exception" not in caplog.text, "nothing reached discord.py's default error printer"


@pytest.mark.parametrize(("rule", "author", "answered"), [
    ("denied_roles", "user", False),  # alice holds the members role, which is denied
    ("denied_workspaces", "user", False),  # alice is a member of the denied guild
    ("allowed_roles", "user", True),  # her role admits her, in DMs too
    ("allowed_workspaces", "outsider", False),  # eve shares no guild with the bot
    ("allowed_workspaces", "user", True),
])
async def test_dms_follow_the_workspace_and_role_rules(fake_discord: FakeDiscord, recording_worker, tmp_path,
                                                      rule: str, author: str, answered: bool):
    fake, worker = fake_discord, recording_worker
    value = {"denied_roles": fake.member_role_id, "allowed_roles": fake.member_role_id}.get(rule, fake.guild_id)
    async with running_bot(fake, worker, tmp_path, notify_not_allowed=True, **{rule: str(value)}):
        await fake.post_user_message("Hello in private", channel_id=fake.dm_channel_id,
                                     author=getattr(fake, author))
        shown_in_dm = await fake.wait_until(  # the refusal notice, or the finished answer
            lambda: (worker.answers or not answered) and settled_answer(fake, fake.dm_channel_id))

    assert fake.requests_to("GET", rf"/guilds/{fake.guild_id}/members/{getattr(fake, author).id}")
    if answered:
        assert shown_in_dm == shown(worker.answers[0].text)
    else:
        assert shown_in_dm == [not_allowed_text("en")] and worker.requests == []
