"""Attachments that cannot be used and users who may not use the bot get the right answer, and files are
judged by their metadata before anything is downloaded."""

from __future__ import annotations

from bot.chat.failures import not_allowed_text, rejected_image_text
from bot.chat.images import Rejected
from bot.chat.splitting import prepare_parts
from tests.bot.adapters.discord.harness import running_bot, settled_answer
from tests.support.images import png

MAX_IMAGE_BYTES = 1_000_000


async def test_non_image_and_oversized_image_are_refused_before_download(fake_discord, recording_worker,
                                                                         tmp_path):
    fake, worker = fake_discord, recording_worker
    async with running_bot(fake, worker, tmp_path, max_image_bytes=MAX_IMAGE_BYTES):
        notes = fake.add_attachment("notes.txt", b"just some text", "text/plain")
        huge = fake.add_attachment("huge.png", png("orange", size=(64, 48)), "image/png", width=9000, height=9000,
                                   declared_size=25_000_000)
        question = await fake.post_user_message("Look at these", mention_bot=True, attachments=[notes, huge])
        thread_id = int(question["id"])
        shown = await fake.wait_until(lambda: worker.answers and settled_answer(fake, thread_id))

    expected = [rejected_image_text(Rejected(name, reason), "en", max_bytes=MAX_IMAGE_BYTES,
                                    max_pixels=50_000_000)
                for name, reason in (("notes.txt", "unsupported"), ("huge.png", "too_large"))]
    assert shown[:2] == expected
    assert not fake.requests_to("GET", r"/cdn/.*"), "nothing is downloaded when the metadata says no"
    assert worker.requests[0].conversation[-1].images == [], "the text is still answered, without images"


async def test_user_not_on_the_allow_list_gets_a_notice_and_no_answer(fake_discord, recording_worker, tmp_path):
    fake, worker = fake_discord, recording_worker
    async with running_bot(fake, worker, tmp_path, allowed_users=str(fake.user.id), notify_not_allowed=True):
        question = await fake.post_user_message("Can I use you?", author=fake.stranger, mention_bot=True)
        [notice] = await fake.wait_until(lambda: fake.bot_messages(fake.channel_id))

    assert notice["content"] == not_allowed_text("en")
    assert notice["message_reference"]["message_id"] == question["id"]
    assert not fake.requests_to("POST", r"/channels/\d+/messages/\d+/threads")
    assert worker.requests == []


async def test_a_reply_without_images_uses_the_images_of_the_message_it_replies_to(fake_discord,
                                                                                 recording_worker, tmp_path):
    fake, worker = fake_discord, recording_worker
    async with running_bot(fake, worker, tmp_path):
        photo = fake.add_attachment("dog.png", png("brown", size=(64, 48)), "image/png", width=64, height=48)
        shared = await fake.post_user_message("", attachments=[photo])  # not for the bot: no answer
        question = await fake.post_user_message("What is in that photo?", mention_bot=True,
                                                reply_to=int(shared["id"]))
        await fake.wait_until(lambda: worker.answers and settled_answer(fake, int(question["id"])))

    [request] = worker.requests
    assert request.conversation[-1].text == "What is in that photo?"
    assert len(request.conversation[-1].images) == 1


async def test_mentioning_the_bots_role_counts_as_a_mention(fake_discord, recording_worker, tmp_path):
    fake, worker = fake_discord, recording_worker
    async with running_bot(fake, worker, tmp_path):
        question = await fake.post_user_message("Hello via the role", mention_bot_role=True)
        await fake.wait_until(lambda: worker.answers and settled_answer(fake, int(question["id"])))

    assert worker.requests[0].conversation[-1].text == "Hello via the role"


async def test_direct_messages_are_answered_in_place(fake_discord, recording_worker, tmp_path):
    fake, worker = fake_discord, recording_worker
    async with running_bot(fake, worker, tmp_path, discord_allow_dms=True):
        await fake.post_user_message("Hi in private", channel_id=fake.dm_channel_id)  # no mention needed
        shown = await fake.wait_until(lambda: worker.answers and settled_answer(fake, fake.dm_channel_id))

    assert shown == list(prepare_parts(worker.answers[0].text, limit=2000, markup="discord"))
    assert not fake.requests_to("POST", r"/channels/\d+/messages/\d+/threads"), "no threads in DMs"
    assert worker.requests[0].conversation[-1].text == "Hi in private"


async def test_direct_messages_are_ignored_when_disabled(fake_discord, recording_worker, tmp_path):
    fake, worker = fake_discord, recording_worker
    async with running_bot(fake, worker, tmp_path, discord_allow_dms=False):
        await fake.post_user_message("Hi in private", channel_id=fake.dm_channel_id)
        question = await fake.post_user_message("Hello in the channel", mention_bot=True)  # comes after the DM
        await fake.wait_until(lambda: worker.answers and settled_answer(fake, int(question["id"])))

    assert fake.bot_messages(fake.dm_channel_id) == []
    assert [request.conversation[-1].text for request in worker.requests] == ["Hello in the channel"]
