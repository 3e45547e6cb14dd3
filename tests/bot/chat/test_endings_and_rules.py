"""The service says what really happened: an answer that fails part-way keeps its text with the failure
after it, a reset that names no conversation changes nothing and says so, and a DM is judged by the
author's memberships when workspace or role rules are set. Real SQLite and real worker processes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bot.chat.conversations import conversation_key
from bot.chat.i18n import t
from bot.chat.messages import Failed, Final, IncomingMessage, Membership, MembershipLookup, Notice, Streaming
from tests.bot.chat.conftest import SLACK_PROFILE, ChatHarness
from tests.support.shapes import discord_in_thread, discord_mention, dm, slack_mention
from tests.support.worker import run_worker


async def test_an_answer_that_times_out_part_way_keeps_its_text_and_says_why(harness_factory, tiny_weights: Path,
                                                                            tmp_path: Path) -> None:
    with run_worker(tiny_weights, tmp_path / "impatient-worker", request_timeout=0.3) as impatient:
        harness = await harness_factory(client_factory=impatient.client, max_new_tokens=1536)
        replies = await harness.send(dm("slack", "Tell me a very long story"), SLACK_PROFILE)

    streamed = [reply for reply in replies if isinstance(reply, Streaming)]
    ending = replies[-1]
    assert streamed, "text was on screen before the deadline"
    assert isinstance(ending, Failed) and ending.code == "timeout" and ending.text == t("timeout", "en")
    shown = "\n\n".join(ending.parts)
    assert shown.startswith("".join(streamed[-1].parts).rstrip()[:100]), "the streamed text is kept"
    assert shown.endswith(t("timeout", "en")), "the notice follows it"
    assert all(len(part) <= SLACK_PROFILE.max_message_chars for part in ending.parts)


async def test_a_failure_before_any_text_is_just_the_notice(harness_factory) -> None:
    from bot.worker_client.http import HttpWorkerClient

    harness = await harness_factory(
        client_factory=lambda: HttpWorkerClient("unix:/nonexistent/worker.sock", connect_attempts=1))
    ending = (await harness.send(dm("discord", "anyone there?")))[-1]
    assert isinstance(ending, Failed) and ending.parts == (t("worker_unavailable", "en"),)


async def test_reset_without_a_conversation_changes_nothing_and_says_where_it_works(harness: ChatHarness) -> None:
    started = discord_mention("Remember the word banana")
    await harness.send(started)
    # a top-level message (or a Slack slash command, which never carries its thread) names no conversation
    assert await harness.send(discord_mention("reset")) == [Notice(t("reset_where", "en"), kind="reset")]
    slash = slack_mention("")
    assert [r async for r in harness.service.run_command("reset", slash, SLACK_PROFILE)] == [
        Notice(t("reset_where", "en"), kind="reset")]
    await harness.send(discord_in_thread(started, "Which word?"))
    assert [turn.text for turn in harness.requests[-1].conversation][::2] == [
        "Remember the word banana", "Which word?"], "the thread kept its history"

    await harness.send(dm("slack", "a DM conversation"), SLACK_PROFILE)
    assert [r async for r in harness.service.run_command("reset", dm("slack", ""), SLACK_PROFILE)] == [
        Notice(t("reset_done", "en"), kind="reset")]
    key = conversation_key(dm("slack", ""))
    assert await harness.store.list_turns((await harness.store.find_conversation(key)).id) == []


def _discord_dm_from(look_up: MembershipLookup) -> IncomingMessage:
    """A Discord DM (no guild) whose author's memberships come from ``look_up``."""
    return replace(dm("discord", "hello"), find_memberships=look_up)


async def test_a_dm_is_judged_by_the_authors_memberships(harness_factory) -> None:
    harness = await harness_factory(denied_roles=("R-muted",), notify_not_allowed=True)

    async def muted() -> tuple[Membership, ...]:
        return (Membership("G1", ("R-muted",)),)

    async def fine() -> tuple[Membership, ...]:
        return (Membership("G1", ("R-ok",)),)

    async def broken() -> tuple[Membership, ...]:
        raise ConnectionError("the platform is unreachable")

    refused = Notice(t("not_allowed", "en"), kind="not_allowed")
    assert await harness.send(_discord_dm_from(muted)) == [refused]
    assert await harness.send(_discord_dm_from(broken)) == [refused], "no lookup, no answer"
    assert isinstance((await harness.send(_discord_dm_from(fine)))[-1], Final)
    assert len(harness.requests) == 1
