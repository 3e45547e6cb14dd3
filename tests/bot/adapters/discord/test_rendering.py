"""Long answers: the adapter's rendering driven with the service's reply events, on the real client.

Tiny random weights do not write 5,000 characters, so this one scenario hands the renderer the events
directly; the text is split exactly as the service splits it.
"""

from __future__ import annotations

from bot.chat.messages import Final, OpenThread, Placeholder, Streaming
from bot.chat.splitting import prepare_parts
from tests.bot.adapters.discord.harness import assert_no_pings, discord_rendering, sends_and_edits

LONG_ANSWER = ("@everyone look at <@1234567890> and <@&987654321>. " + "The quick brown fox jumps. " * 200)[:5000]


async def test_a_5000_character_answer_arrives_as_three_messages_without_pings(fake_discord, tmp_path):
    fake = fake_discord
    parts = prepare_parts(LONG_ANSWER, limit=2000, markup="discord")
    async with discord_rendering(fake, tmp_path) as rendering:
        for reply in (OpenThread("Write a lot"), Placeholder("req-1", "Thinking…"),
                      Streaming("req-1", parts[:2]), Final("req-1", parts)):
            await rendering.render(reply)
        shown = rendering.shown()

    assert shown == [(part, False) for part in parts] and len(shown) == 3
    assert all(len(text) <= 2000 for text, _ in shown)
    assert "@everyone" not in "".join(text for text, _ in shown), "the service neutralises mentions in the text"
    for request in sends_and_edits(fake):
        assert_no_pings(request)
