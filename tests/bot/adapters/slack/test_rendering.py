"""Rendering replies onto the fake Slack through the adapter's real AsyncWebClient: long Japanese answers
split with mrkdwn that renders, notices escaped, and who may press Stop. (The layout of answers on both
platforms, rate limits, deleted messages and pacing: ``tests/chat/test_answer_layout.py``.)"""

from __future__ import annotations

import re
from pathlib import Path

from bot.adapters.slack.listeners import SLACK_PROFILE
from bot.adapters.slack.views import STOP_ACTION_ID, ZERO_WIDTH_SPACE
from bot.chat.i18n import t
from bot.chat.messages import Failed, Final, OpenThread, Placeholder
from bot.chat.splitting import prepare_parts
from bot.worker_client.http import HttpWorkerClient
from tests.bot.adapters.slack.harness import RENDER_CHANNEL as CHANNEL
from tests.bot.adapters.slack.harness import RENDER_ROOT as ROOT
from tests.bot.adapters.slack.harness import running_bot, slack_rendering, slack_settings
from tests.fakes.slack_fake import FakeSlack, action_envelope


def _parts(text: str) -> tuple[str, ...]:
    return prepare_parts(text, limit=SLACK_PROFILE.max_message_chars, markup="slack")


async def test_long_japanese_answer_is_split_and_bold_renders(fake: FakeSlack) -> None:
    paragraph = "これは**とても大事な**説明です。*注意*してください。" * 40
    answer = "\n\n".join([paragraph] * 6)  # about 6,000 characters
    async with slack_rendering(fake) as rendering:
        await rendering.render(OpenThread("thread"))
        await rendering.render(Placeholder("req-1", t("placeholder_waiting", "ja")))
        await rendering.render(Final("req-1", _parts(answer)))

    shown = [text for text, _ in rendering.shown()]
    assert len(shown) >= 2 and all(len(text) <= 3000 for text in shown)
    assert all(f"これは{ZERO_WIDTH_SPACE}*とても大事な*{ZERO_WIDTH_SPACE}説明" in text for text in shown)
    assert all(f"。{ZERO_WIDTH_SPACE}_注意_{ZERO_WIDTH_SPACE}して" in text for text in shown)
    assert re.sub(r"[*_\s\u200b]", "", "".join(shown)) == re.sub(r"[*_\s]", "", answer)  # nothing lost
    assert [c.method for c in fake.calls if c.method.startswith("reactions")] == ["reactions.add",
                                                                                   "reactions.remove"]


async def test_a_failure_of_its_own_is_a_notice_with_slack_markup_escaped(fake: FakeSlack) -> None:
    async with slack_rendering(fake) as rendering:
        await rendering.render(OpenThread("thread"))
        await rendering.render(Failed(None, "broken <!channel> & co", code="internal"))
    (notice,) = fake.thread_posts(CHANNEL, ROOT)
    assert notice.args["text"] == "broken &lt;!channel&gt; &amp; co"
    assert "blocks" not in notice.args and fake.calls_to("chat.update") == []


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
