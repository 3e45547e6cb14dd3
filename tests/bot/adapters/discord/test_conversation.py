"""A conversation as people have it: a mention with a photo opens a thread, follow-ups continue it,
/reset and /help work through interactions, and the Stop button ends an answer."""

from __future__ import annotations

from bot.chat.i18n import t
from bot.chat.images import ACCEPTED_TYPES
from bot.chat.splitting import prepare_parts
from tests.bot.adapters.discord.harness import (
    assert_no_pings,
    running_bot,
    sends_and_edits,
    settled_answer,
)
from tests.fakes.discord_fake import FakeDiscord
from tests.support.images import png


def shown(text: str) -> list[str]:
    """How the service splits and neutralises an answer for Discord."""
    return list(prepare_parts(text, limit=2000, markup="discord"))


async def test_mention_with_photo_opens_thread_and_follow_up_continues(fake_discord, recording_worker, tmp_path):
    fake, worker = fake_discord, recording_worker
    async with running_bot(fake, worker, tmp_path):
        photo = fake.add_attachment("cat.png", png("orange", size=(64, 48)), "image/png", width=64, height=48)
        question = await fake.post_user_message("What is in this picture?", mention_bot=True,
                                                attachments=[photo])
        thread_id = int(question["id"])  # a thread started from a message shares its id
        first = await fake.wait_until(lambda: worker.answers and settled_answer(fake, thread_id))

        [created] = fake.requests_to("POST", rf"/channels/{fake.channel_id}/messages/{thread_id}/threads")
        assert created.body["name"] == "What is in this picture?"
        assert fake.requests_to("POST", rf"/channels/{thread_id}/typing")
        assert fake.requests_to("GET", r"/cdn/.*/cat\.png")
        assert first == shown(worker.answers[0].text)
        assert fake.requests_to("PATCH", rf"/channels/{thread_id}/messages/\d+"), "the placeholder is edited"
        # the pace of edits: tests/chat/test_answer_layout.py::test_streamed_edits_are_paced_per_message

        await fake.post_user_message("And what colour is it?", channel_id=thread_id)  # no mention
        await fake.wait_until(lambda: len(worker.answers) == 2 and settled_answer(fake, thread_id))

    second = worker.requests[1].conversation
    assert [turn.role for turn in second] == ["user", "assistant", "user"]
    assert second[0].text == "What is in this picture?" and len(second[0].images) == 1
    assert second[1].text == worker.answers[0].text
    assert second[2].text == "And what colour is it?"
    assert settled_answer(fake, thread_id)[-len(shown(worker.answers[1].text)):] == shown(worker.answers[1].text)
    for request in sends_and_edits(fake):
        assert_no_pings(request)


async def test_reset_and_help_commands(fake_discord, recording_worker, tmp_path):
    fake, worker = fake_discord, recording_worker
    async with running_bot(fake, worker, tmp_path) as service:
        question = await fake.post_user_message("Hello there", mention_bot=True)
        thread_id = int(question["id"])
        await fake.wait_until(lambda: worker.answers and settled_answer(fake, thread_id))

        await fake.run_command("reset", channel_id=thread_id)
        await fake.run_command("help", channel_id=thread_id, locale="ja")
        callbacks = await fake.wait_until(
            lambda: len(c := fake.requests_to("POST", r"/interactions/\d+/[^/]+/callback")) == 2 and c)
        await fake.post_user_message("Start again", mention_bot=True, channel_id=thread_id)
        await fake.wait_until(lambda: len(worker.answers) == 2 and settled_answer(fake, thread_id))

    by_text = {c.body["data"]["content"]: c.body["data"] for c in callbacks}
    reset = by_text[t("reset_done", "en")]
    assert not reset.get("flags")
    help_ja = by_text[t("help", "ja", max_images=service._settings.max_images_per_message,
                        accepted=ACCEPTED_TYPES, max_mb=round(service._settings.max_image_bytes / 1_000_000))]
    assert help_ja["flags"] & 64, "help is ephemeral"
    assert [turn.role for turn in worker.requests[1].conversation] == ["user"], "reset forgot the thread"
    assert worker.requests[1].conversation[0].text == "Start again"


async def test_stop_button_cancels_a_running_answer(fake_discord, recording_worker, tmp_path):
    fake, worker = fake_discord, recording_worker
    async with running_bot(fake, worker, tmp_path, max_new_tokens=1536):
        question = await fake.post_user_message("Tell me a very long story", mention_bot=True)
        thread_id = int(question["id"])
        placeholder = await fake.wait_until(
            lambda: next((m for m in fake.bot_messages(thread_id) if m["components"]), None))
        custom_id = placeholder["components"][0]["components"][0]["custom_id"]

        await fake.click(int(placeholder["id"]), custom_id, author=fake.stranger)
        await fake.click(int(placeholder["id"]), custom_id)
        final = await fake.wait_until(lambda: settled_answer(fake, thread_id))

    refused, accepted = fake.requests_to("POST", r"/interactions/\d+/[^/]+/callback")
    assert refused.body["data"]["content"] == t("cancel_not_allowed", "en")
    assert refused.body["data"]["flags"] & 64
    assert accepted.body["type"] == 6, "a deferred update: the answer's last edit removes the button"
    assert final[-1].endswith(t("cancelled_suffix", "en"))
    assert worker.answers[0].finish_reason == "cancelled"


async def test_a_japanese_server_gets_japanese_labels(recording_worker, tmp_path):
    fake = await FakeDiscord(guild_locale="ja").start()
    try:
        async with running_bot(fake, recording_worker, tmp_path):
            question = await fake.post_user_message("この写真は何ですか？", mention_bot=True)
            thread_id = int(question["id"])
            await fake.wait_until(lambda: recording_worker.answers and settled_answer(fake, thread_id))
    finally:
        await fake.stop()

    [placeholder, *_] = fake.requests_to("POST", rf"/channels/{thread_id}/messages")
    assert placeholder.body["content"] == t("placeholder_waiting", "ja")
    assert placeholder.body["components"][0]["components"][0]["label"] == t("stop_button", "ja")
