"""The one answer layout, as each platform shows it: one table of cases, run against Discord and Slack.

Each case hands the platform adapter the service's reply events (the unmodified discord.py or slack_sdk
client talking to the local fake) and checks the answer's messages as the fake holds them: their texts,
and which one carries the Stop button. The layout is decided once, in :mod:`bot.chat.layout`; these
tests would fail if either adapter decided differently. Below the table: the same answer under the
platforms' unkindness (429s on edits and posts, a message deleted mid-stream) and the pacing of edits.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from bot.chat.i18n import t
from bot.chat.messages import Failed, Final, OpenThread, Placeholder, PlatformProfile, Reply, Streaming
from bot.chat.splitting import prepare_parts
from tests.bot.adapters.discord.harness import discord_rendering
from tests.bot.adapters.slack.harness import slack_rendering
from tests.fakes.discord_fake import FakeDiscord
from tests.fakes.slack_fake import FakeSlack
from tests.support.waiting import eventually

RID = "req-layout"
FAST_EDITS_S = 0.2  # the table checks what is shown, not the pace: edits may follow each other quickly
SENTENCE = "The quick brown fox jumps over the lazy dog. "


class Rendering(Protocol):
    """What both platform drivers offer (``tests/discord/harness.py``, ``tests/slack/harness.py``)."""

    platform: str
    profile: PlatformProfile

    async def render(self, reply: Reply) -> None: ...
    def shown(self) -> list[tuple[str, bool]]: ...
    def posts(self) -> int: ...
    def edit_times(self) -> dict[str, list[float]]: ...
    def rate_limit(self, *, edits_every: int, posts_every: int, retry_after: float) -> None: ...
    def rate_limited(self) -> tuple[int, int]: ...
    def delete(self, index: int) -> None: ...
    def refuse_next_edit(self) -> None: ...
    def failed_edits(self) -> int: ...


@pytest.fixture(params=["discord", "slack"])
def platform_name(request: pytest.FixtureRequest) -> str:
    return request.param


async def _rendering(name: str, tmp_path: Path, interval: float | None) -> AsyncIterator[Rendering]:
    options: dict[str, Any] = {} if interval is None else {"interval": interval}
    if name == "discord":
        fake = await FakeDiscord().start()
        try:
            async with discord_rendering(fake, tmp_path, **options) as rendering:
                yield rendering
        finally:
            await fake.stop()
    else:
        fake = FakeSlack()
        await fake.start()
        try:
            async with slack_rendering(fake, **options) as rendering:
                yield rendering
        finally:
            await fake.stop()


@pytest.fixture
async def quick(platform_name: str, tmp_path: Path) -> AsyncIterator[Rendering]:
    """The platform's adapter with edits allowed every 0.2 s."""
    async for rendering in _rendering(platform_name, tmp_path, FAST_EDITS_S):
        yield rendering


@pytest.fixture
async def paced(platform_name: str, tmp_path: Path) -> AsyncIterator[Rendering]:
    """The platform's adapter at its real pace (its profile's edit interval)."""
    async for rendering in _rendering(platform_name, tmp_path, None):
        yield rendering


async def shows(rendering: Rendering, expected: list[tuple[str, bool]], *, within: float = 20.0) -> None:
    """Wait until the fake shows exactly ``expected`` as the answer's messages."""
    deadline = time.monotonic() + within
    while rendering.shown() != expected:
        if time.monotonic() > deadline:
            assert [(text[:60], stop) for text, stop in rendering.shown()] == [
                (text[:60], stop) for text, stop in expected]
            assert rendering.shown() == expected
        await asyncio.sleep(0.05)


def split(text: str, profile: PlatformProfile) -> tuple[str, ...]:
    return prepare_parts(text, limit=profile.max_message_chars, markup=profile.markup)


def long_text(profile: PlatformProfile) -> str:
    """About one and a half messages of text."""
    return (SENTENCE * math.ceil(1.5 * profile.max_message_chars / len(SENTENCE))).strip()


def ended(text: str, notice: str, profile: PlatformProfile) -> tuple[str, ...]:
    """What an answer that ended early should show: its text, then the notice after a blank line."""
    return split(f"{text}\n\n{notice}", profile)


# ---- the table ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    """A step of a case: wait until the answer has this many messages on screen."""

    messages: int


@dataclass(frozen=True)
class Case:
    name: str
    replies: Callable[[PlatformProfile], list[Reply | Shown]]
    expected: Callable[[PlatformProfile], list[tuple[str, bool]]]  # (text, carries Stop) per message


def _opening(p: PlatformProfile) -> list[Reply]:
    return [OpenThread("A question"), Placeholder(RID, t("placeholder_waiting", "en"))]


def _streamed_long(p: PlatformProfile) -> list[Reply]:
    return [*_opening(p), Streaming(RID, split(long_text(p)[:200], p)), Streaming(RID, split(long_text(p), p))]


STOPPED, FAILURE = t("cancelled_suffix", "en"), t("worker_unavailable", "en")

CASES = [
    Case("waiting: one message with the queue position and Stop",
         lambda p: [OpenThread("A question"), Placeholder(RID, t("queued", "en", position=2), 2)],
         lambda p: [(t("queued", "en", position=2), True)]),
    Case("streaming: the text replaces the placeholder and keeps Stop",
         lambda p: [*_opening(p), Streaming(RID, ("Hello there",))],
         lambda p: [("Hello there", True)]),
    Case("streaming past the limit: a second message, and Stop moves to it",
         _streamed_long,
         lambda p: [(split(long_text(p), p)[0], False), (split(long_text(p), p)[1], True)]),
    Case("done: every part, no Stop",
         lambda p: [*_streamed_long(p), Final(RID, split(long_text(p), p))],
         lambda p: [(part, False) for part in split(long_text(p), p)]),
    Case("stopped: the text streamed so far is kept and a short notice follows it",
         lambda p: [*_streamed_long(p), Final(RID, ended(long_text(p), STOPPED, p), cancelled=True)],
         lambda p: [(part, False) for part in ended(long_text(p), STOPPED, p)]),
    Case("failed after text: the text is kept and the failure follows it",
         lambda p: [*_streamed_long(p), Failed(RID, FAILURE, "unavailable", ended(long_text(p), FAILURE, p))],
         lambda p: [(part, False) for part in ended(long_text(p), FAILURE, p)]),
    Case("failed before any text: the failure replaces the placeholder",
         lambda p: [*_opening(p), Failed(RID, FAILURE, "unavailable", (FAILURE,))],
         lambda p: [(FAILURE, False)]),
    Case("restarted with less text: the surplus message shows a marker",
         lambda p: [*_streamed_long(p), Shown(2), Placeholder(RID, t("restarted", "en"))],
         lambda p: [(t("restarted", "en"), True), ("…", False)]),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name.split(":")[0] for case in CASES])
async def test_answer_layout(quick: Rendering, case: Case) -> None:
    for step in case.replies(quick.profile):
        if isinstance(step, Shown):
            await eventually(lambda n=step.messages: len(quick.shown()) == n)
        else:
            await quick.render(step)
    expected = case.expected(quick.profile)
    await shows(quick, expected)
    assert quick.posts() == len(expected), "each message of the answer is posted once"


# ---- the same answer on unkind platforms ----------------------------------------------------------------


async def _stream(rendering: Rendering, text: str, *, step: int, every_s: float) -> None:
    """The service's events for ``text`` arriving ``step`` characters at a time."""
    await rendering.render(OpenThread("A question"))
    await rendering.render(Placeholder(RID, t("placeholder_waiting", "en")))
    for end in range(step, len(text), step):
        await rendering.render(Streaming(RID, split(text[:end], rendering.profile)))
        await asyncio.sleep(every_s)
    await rendering.render(Final(RID, split(text, rendering.profile)))


async def test_rate_limited_edits_and_posts_still_show_the_whole_answer_once(
        paced: Rendering, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot.chat.rendering")
    answer = (SENTENCE * 70)[:3000].strip()
    expected = [(part, False) for part in split(answer, paced.profile)]
    assert len(expected) == 2  # 3,000 characters take two messages on both platforms
    paced.rate_limit(edits_every=3, posts_every=2, retry_after=1.0)
    await _stream(paced, answer, step=75, every_s=0.1)  # about 4 s, like a real answer
    await shows(paced, expected, within=40)
    assert paced.posts() == len(expected), "nothing is posted twice"
    edits_refused, posts_refused = paced.rate_limited()
    assert edits_refused >= 1 and posts_refused == 1, "the limits really struck"
    refusals = [record for record in caplog.records if record.name == "bot.chat.rendering"]
    assert not refusals, "the client library waited the 429s out; the renderer never saw a refusal"


async def test_a_message_deleted_mid_stream_continues_in_a_new_message(quick: Rendering) -> None:
    await quick.render(OpenThread("A question"))
    await quick.render(Placeholder(RID, t("placeholder_waiting", "en")))
    await quick.render(Streaming(RID, ("First words",)))
    await shows(quick, [("First words", True)])
    quick.delete(0)
    await quick.render(Streaming(RID, ("First words and more",)))
    await quick.render(Final(RID, ("First words and more, to the end.",)))
    await shows(quick, [("First words and more, to the end.", False)])
    assert quick.posts() == 2, "the placeholder, then one new message for the rest"


async def test_a_refused_edit_is_tried_again_with_the_freshest_text(quick: Rendering) -> None:
    await quick.render(OpenThread("A question"))
    await quick.render(Placeholder(RID, t("placeholder_waiting", "en")))
    await quick.render(Streaming(RID, ("Half",)))
    await shows(quick, [("Half", True)])
    quick.refuse_next_edit()
    await quick.render(Streaming(RID, ("Half and more",)))
    await quick.render(Final(RID, ("Half and more, done.",)))
    await shows(quick, [("Half and more, done.", False)])
    assert quick.failed_edits() == 1 and quick.posts() == 1


async def test_streamed_edits_are_paced_per_message(paced: Rendering) -> None:
    await paced.render(OpenThread("A question"))
    await paced.render(Placeholder(RID, t("placeholder_waiting", "en")))
    text = ""
    for word in range(70):  # 20 updates a second for 3.5 s, far faster than a platform allows edits
        text += f"word{word} "
        await paced.render(Streaming(RID, (text.strip(),)))
        await asyncio.sleep(0.05)
    await paced.render(Final(RID, (text.strip(),)))
    await shows(paced, [(text.strip(), False)])
    [times] = paced.edit_times().values()
    assert len(times) >= 3, "the message was edited several times while the text grew"
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert min(gaps) >= paced.profile.edit_interval_s * 0.9, gaps
