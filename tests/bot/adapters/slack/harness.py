"""Run the real Slack adapter (``run_slack``) against the fake Slack, with a real chat service and store."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.adapters.slack import run_slack
from bot.adapters.slack.app import web_client
from bot.adapters.slack.listeners import SLACK_PROFILE
from bot.adapters.slack.operations import ReplyRenderer, ReplyTarget
from bot.adapters.slack.views import to_mrkdwn
from bot.chat.messages import Reply
from bot.chat.service import ChatService
from bot.chat.splitting import prepare_parts
from bot.chat.store import Store
from bot.settings import Settings
from bot.worker_client.base import WorkerClient
from tests.fakes.bodies import Delivery, SentBody
from tests.fakes.slack_fake import APP_TOKEN, BOT_TOKEN, BOT_USER_ID, TEAM_ID, FakeSlack, events_envelope
from tests.support.recording import RecordingWorker


def slack_settings(fake: FakeSlack, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN, slack_api_base_url=fake.api_url,
        data_dir=data_dir, max_new_tokens=48, rate_limit_per_minute=600, rate_limit_burst=100,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


@dataclass
class RunningBot:
    fake: FakeSlack
    settings: Settings
    service: ChatService
    store: Store
    task: asyncio.Task


@contextlib.asynccontextmanager
async def running_bot(fake: FakeSlack, settings: Settings, worker: WorkerClient) -> AsyncIterator[RunningBot]:
    """``run_slack`` in a task; in Socket Mode it is connected to the fake when this yields."""
    store = await Store.open(settings.database_path)
    service = ChatService(settings=settings, store=store, worker=worker)
    task = asyncio.create_task(run_slack(settings, service))
    try:
        if settings.slack_mode == "socket":
            await fake.wait_connected()
        yield RunningBot(fake, settings, service, store, task)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


# ---- events as Slack sends them ------------------------------------------------------------------


def mention_event(text: str, *, ts: str, user: str = "U0ALICE", channel: str = "C0GENERAL",
                  files: list[dict] | None = None, thread_ts: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "app_mention", "user": user, "text": f"<@{BOT_USER_ID}> {text}".strip(),
                             "ts": ts, "event_ts": ts, "channel": channel, "team": TEAM_ID}
    if files:
        event["files"] = files
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def message_event(text: str, *, ts: str, user: str = "U0ALICE", channel: str = "C0GENERAL",
                  channel_type: str = "channel", files: list[dict] | None = None,
                  thread_ts: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "message", "user": user, "text": text, "ts": ts, "event_ts": ts,
                             "channel": channel, "channel_type": channel_type, "team": TEAM_ID}
    if files:
        event["files"] = files
        event["subtype"] = "file_share"
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


# ---- the adapter's rendering on its own (replies handed in directly) -------------------------------------

RENDER_CHANNEL = "C0GENERAL"
RENDER_ROOT = "5.000100"


class SlackRendering:
    """The Slack adapter rendering the replies to one post, and what the fake shows of the answer."""

    platform = "slack"
    profile = SLACK_PROFILE

    def __init__(self, fake: FakeSlack, renderer: ReplyRenderer) -> None:
        self.fake = fake
        self._renderer = renderer

    async def render(self, reply: Reply) -> None:
        await self._renderer.render(reply)

    def shown(self) -> list[tuple[str, bool]]:
        """(text, carries the Stop button) of each message of the answer that still exists."""
        return [(self.fake.shown_text(RENDER_CHANNEL, ts), self.fake.shows_buttons(RENDER_CHANNEL, ts))
                for ts in self._posted() if self.fake.exists(RENDER_CHANNEL, ts)]

    def posts(self) -> int:
        return len(self._posted())

    def edit_times(self) -> dict[str, list[float]]:
        times: dict[str, list[float]] = {}
        for call in self.fake.calls_to("chat.update", channel=RENDER_CHANNEL):
            if call.result.get("ok"):
                times.setdefault(call.args["ts"], []).append(call.received_at)
        return times

    def rate_limit(self, *, edits_every: int, posts_every: int, retry_after: float) -> None:
        self.fake.rate_limit("chat.update", every=edits_every, retry_after=round(retry_after))
        self.fake.rate_limit("chat.postMessage", every=posts_every, retry_after=round(retry_after))

    def rate_limited(self) -> tuple[int, int]:
        """(edits, posts) answered 429."""
        return tuple(len([c for c in self.fake.calls_to(method) if c.result.get("error") == "ratelimited"])
                     for method in ("chat.update", "chat.postMessage"))  # type: ignore[return-value]

    def delete(self, index: int) -> None:
        live = [ts for ts in self._posted() if self.fake.exists(RENDER_CHANNEL, ts)]
        self.fake.delete_message(RENDER_CHANNEL, live[index])

    def failed_edits(self) -> int:
        return len([call for call in self.fake.calls_to("chat.update") if not call.result.get("ok")])

    def refuse_next_edit(self) -> None:
        """The next edit fails (``internal_error``)."""
        self.fake.fail("chat.update", "internal_error", times=1)

    def _posted(self) -> list[str]:
        return [call.result["ts"] for call in self.fake.thread_posts(RENDER_CHANNEL, RENDER_ROOT)]


@contextlib.asynccontextmanager
async def slack_rendering(fake: FakeSlack, *,
                          interval: float = SLACK_PROFILE.edit_interval_s) -> AsyncIterator[SlackRendering]:
    """The adapter ready to render the replies to one channel post (edits paced to ``interval``), through
    the Web API client the adapter uses (with slack_sdk's retry handlers)."""
    target = ReplyTarget(channel=RENDER_CHANNEL, thread_ts=None, user="U0ALICE", post_ts=RENDER_ROOT, lang="en")
    renderer = ReplyRenderer(web_client(BOT_TOKEN, fake.api_url), target, edit_interval_s=interval)
    try:
        yield SlackRendering(fake, renderer)
    finally:
        await renderer.close()


# ---- a running bot, driven the way a user would ----------------------------------------------------------

ASK_CHANNEL = "C0GENERAL"


class SlackChat:
    """The running Slack bot, asked questions through the fake; reads back what the fake received."""

    platform = "slack"

    def __init__(self, fake: FakeSlack, worker: RecordingWorker) -> None:
        self.fake = fake
        self.worker = worker
        self._asked = itertools.count(1)

    def image(self, name: str, data: bytes, *, declared_size: int | None = None,
              delivery: Delivery | None = None) -> dict[str, Any]:
        """An image file on the fake's file host (``files[]`` entry)."""
        return self.fake.add_file(name, "image/png", data, declared_size=declared_size, delivery=delivery)

    def body_sent(self, image: dict[str, Any]) -> SentBody:
        return self.fake.file_bodies[image["id"]]

    async def ask(self, text: str, images: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
        """Mention the bot in the channel; returns the events_api envelope."""
        ts = self.fake.next_ts()
        envelope = events_envelope(mention_event(text, ts=ts, channel=ASK_CHANNEL, files=list(images)),
                                   event_id=f"EvAsk{next(self._asked)}")
        await self.fake.push(envelope)
        return envelope

    async def answer(self, question: dict[str, Any], *, answers: int = 1) -> list[str]:
        """The bot's messages in the question's thread, once the answer is over (reaction taken off)."""
        ts = question["payload"]["event"]["ts"]
        await self.fake.wait_for(lambda: len(self.worker.answers) >= answers and any(
            call.args.get("timestamp") == ts for call in self.fake.calls_to("reactions.remove")))
        return [self.fake.shown_text(ASK_CHANNEL, post.result["ts"])
                for post in self.fake.thread_posts(ASK_CHANNEL, ts)]

    def strike_mid_answer(self, question: dict[str, Any], *, graceful: bool = True) -> None:
        """As the bot posts its first message, Slack asks for a reconnect (``disconnect``), or with
        ``graceful=False`` the connection just drops; on the new connection the question arrives again,
        as both of its events."""
        event = question["payload"]["event"]
        twin = events_envelope(message_event(event["text"], ts=event["ts"], channel=event["channel"]),
                               event_id=question["payload"]["event_id"] + "m")
        self.fake.after("chat.postMessage", lambda: self.fake.disconnect(announced=graceful,
                                                                         redeliver=[question, twin]))

    def reconnected(self) -> bool:
        """The app opened a second Socket Mode connection."""
        return self.fake.connections == 2 and len(self.fake.calls_to("apps.connections.open")) >= 2

    @staticmethod
    def shows(answer: str) -> list[str]:
        """The messages that show ``answer`` on Slack (split and escaped as the service does, as mrkdwn)."""
        parts = prepare_parts(answer, limit=SLACK_PROFILE.max_message_chars, markup="slack")
        return [to_mrkdwn(part) for part in parts if part.strip()]

    def answer_posts(self, question: dict[str, Any]) -> int:
        return len(self.fake.thread_posts(ASK_CHANNEL, question["payload"]["event"]["ts"]))


@contextlib.asynccontextmanager
async def running_chat(worker: RecordingWorker, tmp_path: Path, **overrides: Any) -> AsyncIterator[SlackChat]:
    """A fake Slack and the bot (``run_slack``, Socket Mode) connected to it."""
    fake = FakeSlack()
    await fake.start()
    try:
        async with running_bot(fake, slack_settings(fake, tmp_path, **overrides), worker):
            yield SlackChat(fake, worker)
    finally:
        await fake.stop()
