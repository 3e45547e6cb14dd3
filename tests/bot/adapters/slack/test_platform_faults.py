"""Slack refusing the bot: channels it may not post in, and access rules that DMs must not get around.
The unmodified Bolt app in Socket Mode against the fake, with a real service and store."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bot.chat.i18n import t
from bot.worker_client.http import HttpWorkerClient
from tests.bot.adapters.slack.harness import mention_event, message_event, running_bot, slack_settings
from tests.fakes.slack_fake import TEAM_ID, FakeSlack, events_envelope


@pytest.mark.parametrize(("error", "hint"), [
    ("not_in_channel", "invite it with /invite"),
    ("channel_not_found", "cannot see it"),
    ("is_archived", "archived"),
])
async def test_a_channel_the_bot_cannot_post_in_gets_one_clear_log_line(
        fake: FakeSlack, tmp_path: Path, idle_worker: HttpWorkerClient, caplog: pytest.LogCaptureFixture,
        error: str, hint: str) -> None:
    caplog.set_level(logging.INFO)
    fake.fail("chat.postMessage", error, channel="C0CLOSED")
    async with running_bot(fake, slack_settings(fake, tmp_path), idle_worker):
        await fake.push(events_envelope(mention_event("hello?", ts="2.000100", channel="C0CLOSED"),
                                        event_id="EvC1"))
        await fake.wait_for(lambda: fake.calls_to("reactions.remove"))
        await fake.push(events_envelope(mention_event("help", ts="2.000200"), event_id="EvC2"))
        await fake.wait_for(lambda: fake.thread_posts("C0GENERAL", "2.000200"))  # still answering elsewhere

    failures = [r for r in caplog.records if r.name == "bot.adapters.reporting"]
    assert len(failures) == 1 and error in failures[0].getMessage() and hint in failures[0].getMessage()
    assert failures[0].exc_info is None, "a refusal, not a bug: no traceback"
    refused = fake.calls_to("chat.postMessage", channel="C0CLOSED")
    assert len(refused) == 1, "no second attempt to post where Slack said no"
    assert "Failed to run" not in caplog.text, "nothing escaped into Bolt"


@pytest.mark.parametrize(("rule", "answered"), [
    ({"allowed_workspaces": "T0OTHER"}, False),
    ({"denied_workspaces": TEAM_ID}, False),
    ({"allowed_workspaces": TEAM_ID}, True),
])
async def test_a_dm_belongs_to_its_team_for_the_workspace_rules(fake: FakeSlack, tmp_path: Path,
                                                               idle_worker: HttpWorkerClient, rule: dict,
                                                               answered: bool) -> None:
    settings = slack_settings(fake, tmp_path, notify_not_allowed=True, **rule)
    async with running_bot(fake, settings, idle_worker):
        await fake.push(events_envelope(message_event("hi", ts="2.000300", channel="D0ALICE", channel_type="im"),
                                        event_id="EvD1"))
        await fake.wait_for(lambda: fake.calls_to("chat.postEphemeral") or fake.calls_to("reactions.remove"))
    refusals = fake.calls_to("chat.postEphemeral", text=t("not_allowed", "en"))
    if answered:
        assert not refusals and fake.thread_posts("D0ALICE", None), "answered (the model is away: a failure)"
    else:
        assert len(refusals) == 1 and fake.calls_to("chat.postMessage") == []
