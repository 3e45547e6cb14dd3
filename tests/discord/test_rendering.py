"""Long answers: the adapter's rendering driven with the service's reply events, on the real client.

Tiny random weights do not write 5,000 characters, so this one scenario hands the renderer the events
directly; the text is split exactly as the service splits it.
"""

from __future__ import annotations

import asyncio

from bot.adapters.discord.client import ChatClient, point_at_endpoints
from bot.adapters.discord.operations import MessageReplies
from bot.adapters.discord.views import stop_view
from bot.chat.messages import Final, OpenThread, Placeholder, Streaming
from bot.chat.splitting import prepare_parts
from tests.discord.harness import assert_no_pings, discord_settings, sends_and_edits, settled_answer

LONG_ANSWER = ("@everyone look at <@1234567890> and <@&987654321>. " + "The quick brown fox jumps. " * 200)[:5000]


async def test_a_5000_character_answer_arrives_as_three_messages_without_pings(fake_discord, tmp_path):
    fake = fake_discord
    settings = discord_settings(fake, tmp_path, discord_dev_guild_id=None)
    point_at_endpoints(settings)
    client = ChatClient(settings=settings, service=None)
    task = asyncio.create_task(client.start("fake-token"))
    try:
        await fake.wait_ready()
        question = await fake.post_user_message("Write a lot", mention_bot=True)
        channel = await fake.wait_until(lambda: client.get_channel(fake.channel_id))
        origin = await channel.fetch_message(int(question["id"]))
        parts = prepare_parts(LONG_ANSWER, limit=2000, markup="discord")
        async with MessageReplies(origin, interval=1.0,
                                  stop_view=lambda request_id: stop_view(request_id, lang="en")) as replies:
            for reply in (OpenThread("Write a lot"), Placeholder("req-1", "Thinking…"),
                          Streaming("req-1", parts[:2]), Final("req-1", parts)):
                await replies.render(reply)
    finally:
        await client.close()
        await asyncio.gather(task, return_exceptions=True)

    shown = settled_answer(fake, int(question["id"]))
    assert len(shown) == 3 and all(len(text) <= 2000 for text in shown)
    assert shown == list(parts)
    assert "@everyone" not in "".join(shown), "the service neutralises mentions in the text"
    for request in sends_and_edits(fake):
        assert_no_pings(request)
