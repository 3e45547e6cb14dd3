"""Decoding Slack events: mentions, threads, DMs."""

from __future__ import annotations

from bot.adapters.slack.incoming import (
    is_user_post,
    may_concern_bot,
    reply_thread_ts,
    strip_bot_mention,
)

BOT = "U0BOT"


def test_the_bots_mention_is_stripped_with_or_without_a_label() -> None:
    assert strip_bot_mention(f"<@{BOT}> what is this?", BOT) == "what is this?"
    assert strip_bot_mention(f"hey <@{BOT}|minigpt4>  look", BOT) == "hey look"
    assert strip_bot_mention("<@U0OTHER> hi", BOT) == "<@U0OTHER> hi"


def test_only_people_posting_are_answered() -> None:
    assert is_user_post({"user": "U1", "text": "hi"})
    assert is_user_post({"user": "U1", "subtype": "file_share"})
    assert not is_user_post({"user": "U1", "subtype": "message_changed"})
    assert not is_user_post({"user": "U2", "bot_id": "B2"})


def test_replies_go_to_the_thread_and_dms_stay_flat() -> None:
    assert reply_thread_ts({"ts": "1.1", "channel_type": "channel"}) == "1.1"
    assert reply_thread_ts({"ts": "1.2", "thread_ts": "1.1"}) == "1.1"
    assert reply_thread_ts({"ts": "1.3", "channel_type": "im"}) is None


def test_plain_channel_chatter_is_skipped_before_any_lookup() -> None:
    assert not may_concern_bot({"text": "lunch?", "channel_type": "channel"}, BOT)
    assert may_concern_bot({"text": "and then?", "thread_ts": "1.1"}, BOT)
    assert may_concern_bot({"text": "hi", "channel_type": "im"}, BOT)
    assert may_concern_bot({"text": f"<@{BOT}> hi", "channel_type": "channel"}, BOT)
