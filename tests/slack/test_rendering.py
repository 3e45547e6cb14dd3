"""Rendering replies onto the fake Slack through the real AsyncWebClient: split, pacing, Japanese mrkdwn,
failures, and the Stop button."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot.adapters.slack.listeners import SLACK_PROFILE
from bot.adapters.slack.operations import ReplyRenderer, ReplyTarget
from bot.adapters.slack.views import STOP_ACTION_ID, ZERO_WIDTH_SPACE
from bot.chat.i18n import t
from bot.chat.messages import Failed, Final, OpenThread, Placeholder, Streaming
from bot.chat.splitting import prepare_parts
from bot.worker_client.http import HttpWorkerClient
from tests.fakes.slack_fake import BOT_TOKEN, FakeSlack, action_envelope
from tests.slack.harness import running_bot, slack_settings

CHANNEL = "C0GENERAL"
ROOT = "5.000100"


class ManualClock:
    """Time that moves only when the renderer sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
async def client(fake: FakeSlack) -> AsyncIterator[AsyncWebClient]:
    yield AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url)


def _renderer(client: AsyncWebClient, clock: ManualClock | None = None, lang: str = "en") -> ReplyRenderer:
    target = ReplyTarget(channel=CHANNEL, thread_ts=None, user="U0ALICE", post_ts=ROOT, lang=lang)
    if clock is None:
        return ReplyRenderer(client, target, edit_interval_s=SLACK_PROFILE.edit_interval_s)
    return ReplyRenderer(client, target, edit_interval_s=SLACK_PROFILE.edit_interval_s, clock=clock,
                         sleep=clock.sleep)


def _parts(text: str) -> tuple[str, ...]:
    return prepare_parts(text, limit=SLACK_PROFILE.max_message_chars, markup="slack")


async def test_long_japanese_answer_is_split_and_bold_renders(fake: FakeSlack, client: AsyncWebClient) -> None:
    paragraph = "これは**とても大事な**説明です。*注意*してください。" * 40
    answer = "\n\n".join([paragraph] * 6)  # about 6,000 characters
    renderer = _renderer(client, lang="ja")
    await renderer.render(OpenThread("thread"))
    await renderer.render(Placeholder("req-1", t("placeholder_waiting", "ja")))
    await renderer.render(Final("req-1", _parts(answer)))

    posts = fake.thread_posts(CHANNEL, ROOT)
    shown = [fake.shown_text(CHANNEL, post.result["ts"]) for post in posts]
    assert len(shown) >= 2 and all(len(text) <= 3000 for text in shown)
    assert all(f"これは{ZERO_WIDTH_SPACE}*とても大事な*{ZERO_WIDTH_SPACE}説明" in text for text in shown)
    assert all(f"。{ZERO_WIDTH_SPACE}_注意_{ZERO_WIDTH_SPACE}して" in text for text in shown)
    assert re.sub(r"[*_\s\u200b]", "", "".join(shown)) == re.sub(r"[*_\s]", "", answer)  # nothing lost
    assert [c.method for c in fake.calls if c.method.startswith("reactions")] == ["reactions.add",
                                                                                   "reactions.remove"]


async def test_placeholder_edits_are_paced_and_streamed_edits_follow_the_service(
        fake: FakeSlack, client: AsyncWebClient) -> None:
    clock = ManualClock()
    renderer = _renderer(client, clock)
    await renderer.render(Placeholder("req-2", "Queued: #2", 2))
    await renderer.render(Placeholder("req-2", "Queued: #1", 1))
    await renderer.render(Placeholder("req-2", "Queued: #1", 1))  # unchanged: no call, no wait
    await renderer.render(Placeholder("req-2", "Thinking…"))
    for text in ("One", "One two"):  # the service already spaced these
        await renderer.render(Streaming("req-2", (text,)))
    await renderer.render(Final("req-2", ("One two three",)))

    updates = fake.calls_to("chat.update")
    assert [u.args["text"] for u in updates] == ["Queued: #1", "Thinking…", "One", "One two", "One two three"]
    assert clock.sleeps == [pytest.approx(SLACK_PROFILE.edit_interval_s)] * 2


async def test_a_new_message_starts_when_a_part_is_full_and_only_the_last_has_stop(
        fake: FakeSlack, client: AsyncWebClient) -> None:
    renderer = _renderer(client, ManualClock())
    await renderer.render(Placeholder("req-3", "Thinking…"))
    await renderer.render(Streaming("req-3", ("part one", "part two begins")))
    posts = fake.calls_to("chat.postMessage")
    assert [p.args["text"] for p in posts] == ["Thinking…", "part two begins"]
    assert STOP_ACTION_ID in str(posts[1].args["blocks"])
    assert STOP_ACTION_ID not in str(fake.calls_to("chat.update")[-1].args["blocks"])


async def test_failure_replaces_the_placeholder_and_escapes(fake: FakeSlack, client: AsyncWebClient) -> None:
    renderer = _renderer(client)
    await renderer.render(Placeholder("req-4", "Thinking…"))
    await renderer.render(Failed("req-4", "broken <!channel> & co", code="internal"))
    (update,) = fake.calls_to("chat.update")
    assert update.args["text"] == "broken &lt;!channel&gt; &amp; co"
    assert len(fake.calls_to("chat.postMessage")) == 1 and fake.calls_to("reactions.remove")


async def test_failure_after_streaming_keeps_the_partial_answer(fake: FakeSlack,
                                                                client: AsyncWebClient) -> None:
    renderer = _renderer(client)
    await renderer.render(Placeholder("req-5", "Thinking…"))
    await renderer.render(Streaming("req-5", ("Half an answer",)))
    await renderer.render(Failed("req-5", t("worker_unavailable", "en"), code="unavailable"))
    first, failure = fake.calls_to("chat.postMessage")
    assert fake.shown_text(CHANNEL, first.result["ts"]) == "Half an answer"
    assert failure.args["text"] == t("worker_unavailable", "en")
    assert STOP_ACTION_ID not in str(fake.calls_to("chat.update", ts=first.result["ts"])[-1].args["blocks"])


async def test_stop_from_someone_else_is_refused_privately(fake: FakeSlack, tmp_path: Path,
                                                           idle_worker: HttpWorkerClient) -> None:
    async with running_bot(fake, slack_settings(fake, tmp_path), idle_worker):
        for clicker in ("U0ALICE", "U0BOB"):  # the asker, too late (the answer ended): nothing to say
            await fake.push(action_envelope(fake, action_id=STOP_ACTION_ID, value="req-over:U0ALICE",
                                            user=clicker, channel=CHANNEL, message_ts="5.000200",
                                            thread_ts=ROOT))
        await fake.wait_for(lambda: fake.calls_to("chat.postEphemeral") and len(fake.acks) == 2)
    (refusal,) = fake.calls_to("chat.postEphemeral")
    assert refusal.args == {"channel": CHANNEL, "user": "U0BOB", "text": t("cancel_not_allowed", "en"),
                            "thread_ts": ROOT}
