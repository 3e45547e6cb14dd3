"""The Discord adapter end to end: the real discord.py client against the local fake Discord, the real
chat service on SQLite, and a real worker process on tiny weights (through a recording wrapper)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bot.adapters.discord import run_discord
from bot.adapters.discord.client import ChatClient, point_at_endpoints
from bot.adapters.discord.listeners import PROFILE
from bot.adapters.discord.operations import MessageReplies
from bot.adapters.discord.views import stop_view
from bot.chat.messages import Reply
from bot.chat.service import ChatService
from bot.chat.splitting import prepare_parts
from bot.chat.store import Store
from bot.settings import Settings
from bot.worker_client.base import WorkerClient
from tests.fakes.bodies import Delivery, SentBody
from tests.fakes.discord_fake import FakeDiscord, RecordedRequest
from tests.support.recording import RecordingWorker


def discord_settings(fake: FakeDiscord, data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        discord_token="fake-token", discord_api_base_url=fake.api_base_url,
        discord_gateway_url=fake.gateway_url, discord_dev_guild_id=fake.guild_id, data_dir=data_dir,
        max_new_tokens=48, rate_limit_per_minute=600, rate_limit_burst=50,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


@contextlib.asynccontextmanager
async def running_bot(fake: FakeDiscord, worker: WorkerClient, tmp_path: Path,
                      **overrides: object) -> AsyncIterator[ChatService]:
    """``run_discord`` as the app runs it, connected to the fake until the block ends."""
    settings = discord_settings(fake, tmp_path, **overrides)
    store = await Store.open(tmp_path / "bot.sqlite3")
    service = ChatService(settings=settings, store=store, worker=worker)
    task = asyncio.create_task(run_discord(settings, service))
    try:
        await fake.wait_ready()
        yield service
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


# ---- reading what the fake received ------------------------------------------------------------------


def settled_answer(fake: FakeDiscord, channel_id: int) -> list[str] | None:
    """The contents of the bot's messages in a channel once none carries a Stop button any more."""
    messages = fake.bot_messages(channel_id)
    if not messages or any(m["components"] for m in messages):
        return None
    return [m["content"] for m in messages]


def sends_and_edits(fake: FakeDiscord) -> list[RecordedRequest]:
    return (fake.requests_to("POST", r"/channels/\d+/messages")
            + fake.requests_to("PATCH", r"/channels/\d+/messages/\d+"))


def assert_no_pings(request: RecordedRequest) -> None:
    allowed = request.body["allowed_mentions"]
    assert allowed["parse"] == [], request.body
    assert not allowed.get("users") and not allowed.get("roles") and not allowed.get("replied_user")


# ---- the adapter's rendering on its own (replies handed in directly) -------------------------------------


@contextlib.asynccontextmanager
async def connected_client(fake: FakeDiscord, tmp_path: Path) -> AsyncIterator[ChatClient]:
    """The real client (answering nothing by itself) connected to the fake."""
    settings = discord_settings(fake, tmp_path, discord_dev_guild_id=None)
    point_at_endpoints(settings)
    client = ChatClient(settings=settings, service=None)
    task = asyncio.create_task(client.start("fake-token"))
    try:
        await fake.wait_ready()
        yield client
    finally:
        await client.close()
        await asyncio.gather(task, return_exceptions=True)


class DiscordRendering:
    """The Discord adapter rendering the replies to one question, and what the fake shows of the answer."""

    platform = "discord"
    profile = PROFILE

    def __init__(self, fake: FakeDiscord, replies: MessageReplies, question_id: int) -> None:
        self.fake = fake
        self._replies = replies
        self._thread_id = question_id  # the thread opened from the question shares its id

    async def render(self, reply: Reply) -> None:
        await self._replies.render(reply)

    def shown(self) -> list[tuple[str, bool]]:
        """(text, carries the Stop button) of each message of the answer that still exists."""
        return [(m["content"], bool(m["components"])) for m in self.fake.bot_messages(self._thread_id)]

    def posts(self) -> int:
        return len(self._succeeded("POST", rf"/channels/{self._thread_id}/messages"))

    def edit_times(self) -> dict[str, list[float]]:
        times: dict[str, list[float]] = {}
        for request in self._succeeded("PATCH", rf"/channels/{self._thread_id}/messages/\d+"):
            times.setdefault(request.path.rsplit("/", 1)[1], []).append(request.at)
        return times

    def rate_limit(self, *, edits_every: int, posts_every: int, retry_after: float) -> None:
        self.fake.rate_limit("PATCH", rf"/channels/{self._thread_id}/messages/\d+", every=edits_every,
                             retry_after=retry_after)
        self.fake.rate_limit("POST", rf"/channels/{self._thread_id}/messages", every=posts_every,
                             retry_after=retry_after)

    def rate_limited(self) -> tuple[int, int]:
        """(edits, posts) answered 429."""
        return (len([r for r in self.fake.requests_to("PATCH", r"/channels/\d+/messages/\d+") if r.status == 429]),
                len([r for r in self.fake.requests_to("POST", r"/channels/\d+/messages") if r.status == 429]))

    def delete(self, index: int) -> None:
        self.fake.delete_message(int(self.fake.bot_messages(self._thread_id)[index]["id"]))

    def failed_edits(self) -> int:
        return len([r for r in self.fake.requests_to("PATCH", r"/channels/\d+/messages/\d+") if r.status >= 300])

    def refuse_next_edit(self) -> None:
        """The next edit fails with a server error that discord.py does not retry itself (503)."""
        self.fake.refuse("PATCH", rf"/channels/{self._thread_id}/messages/\d+", status=503, code=0,
                         message="Service Unavailable", times=1)

    def _succeeded(self, method: str, pattern: str) -> list[RecordedRequest]:
        return [r for r in self.fake.requests_to(method, pattern) if r.status < 300]


@contextlib.asynccontextmanager
async def discord_rendering(fake: FakeDiscord, tmp_path: Path, *,
                            interval: float = PROFILE.edit_interval_s) -> AsyncIterator[DiscordRendering]:
    """A question posted in the channel, and the adapter ready to render its replies (edits paced to
    ``interval``)."""
    async with connected_client(fake, tmp_path) as client:
        question = await fake.post_user_message("A question", mention_bot=True)
        channel = await fake.wait_until(lambda: client.get_channel(fake.channel_id))
        origin = await channel.fetch_message(int(question["id"]))
        async with MessageReplies(origin, interval=interval,
                                  stop_view=lambda request_id: stop_view(request_id, lang="en")) as replies:
            yield DiscordRendering(fake, replies, int(question["id"]))


# ---- a running bot, driven the way a user would ----------------------------------------------------------


class DiscordChat:
    """The running Discord bot, asked questions through the fake; reads back what the fake received."""

    platform = "discord"

    def __init__(self, fake: FakeDiscord, worker: RecordingWorker) -> None:
        self.fake = fake
        self.worker = worker

    def image(self, name: str, data: bytes, *, declared_size: int | None = None,
              delivery: Delivery | None = None) -> dict[str, Any]:
        """An image attachment on the CDN (sent the fake's default way unless ``delivery`` says otherwise)."""
        return self.fake.add_attachment(name, data, "image/png", declared_size=declared_size, delivery=delivery)

    def body_sent(self, image: dict[str, Any]) -> SentBody:
        return self.fake.cdn_bodies[image["url"].split("/attachments/", 1)[1]]

    async def ask(self, text: str, images: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
        """Mention the bot in the channel; returns the question (its id is the thread's)."""
        return await self.fake.post_user_message(text, mention_bot=True, attachments=list(images))

    async def answer(self, question: dict[str, Any], *, answers: int = 1) -> list[str]:
        """The bot's messages in the question's thread, once the worker answered and nothing has Stop."""
        thread_id = int(question["id"])
        return await self.fake.wait_until(
            lambda: len(self.worker.answers) >= answers and settled_answer(self.fake, thread_id))

    def strike_mid_answer(self, question: dict[str, Any], *, graceful: bool = True) -> None:
        """As the bot posts its first message of the answer, drop the gateway (``graceful``: the session
        RESUMEs; otherwise it is invalidated and the client IDENTIFYs anew); once the client is back,
        deliver the question again."""
        async def strike() -> None:
            await self.fake.drop_gateway(resumable=graceful)
            await self.fake.wait_until(self.fake.reconnected, within=30)
            await self.fake.redeliver(question)

        self.fake.after("POST", rf"/channels/{question['id']}/messages", strike)

    def reconnected(self) -> bool:
        """The client came back after the drop: RESUMEd, or told INVALID_SESSION and IDENTIFYed anew."""
        log = self.fake.gateway_log
        return log[-2:] == ["RESUME", "RESUMED"] or log == ["IDENTIFY", "RESUME", "INVALID_SESSION", "IDENTIFY"]

    @staticmethod
    def shows(answer: str) -> list[str]:
        """The messages that show ``answer`` on Discord (split and neutralised as the service does)."""
        return list(prepare_parts(answer, limit=PROFILE.max_message_chars, markup="discord"))

    def answer_posts(self, question: dict[str, Any]) -> int:
        """Messages the bot posted in the question's thread."""
        return len([r for r in self.fake.requests_to("POST", rf"/channels/{question['id']}/messages")
                    if r.status < 300])


@contextlib.asynccontextmanager
async def running_chat(worker: RecordingWorker, tmp_path: Path, **overrides: object) -> AsyncIterator[DiscordChat]:
    """A fake Discord and the bot (``run_discord``) connected to it."""
    fake = await FakeDiscord().start()
    try:
        async with running_bot(fake, worker, tmp_path, **overrides):
            yield DiscordChat(fake, worker)
    finally:
        await fake.stop()
