"""A crowd on the fake Slack: many users mentioning the bot with photos at once, and what each of them saw."""

from __future__ import annotations

import asyncio
import io
import random
from dataclasses import dataclass

from PIL import Image

from bot.chat.i18n import t
from model_worker.wire.protocol import BUSY_RETRY_AFTER_S
from tests.bot.adapters.slack.harness import ASK_CHANNEL, mention_event
from tests.fakes.slack_fake import FakeSlack, events_envelope

BUSY = t("busy", "en", seconds=round(BUSY_RETRY_AFTER_S))


def photo(index: int, *, size: tuple[int, int] = (96, 80)) -> bytes:
    """A JPEG of noise (it compresses about as badly as a real photo), distinct per index."""
    rng = random.Random(index)
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@dataclass
class Crowd:
    """``questions`` mentions of the bot by ``users`` users (round-robin), each with its own photo."""

    fake: FakeSlack
    questions: list[tuple[str, str]]  # (user, ts) of each question, in the order they were asked

    @classmethod
    async def ask(cls, fake: FakeSlack, *, questions: int, users: int, within_s: float = 0.0,
                  photo_size: tuple[int, int] = (96, 80)) -> Crowd:
        """Post the questions, spread evenly over ``within_s`` seconds."""
        asked = []
        for index in range(questions):
            user, ts = f"U{index % users:04d}", fake.next_ts()
            file = fake.add_file(f"photo{index}.jpg", "image/jpeg", photo(index, size=photo_size))
            asked.append((user, ts))
            event = mention_event(f"question {index}", ts=ts, user=user, files=[file], channel=ASK_CHANNEL)
            await fake.push(events_envelope(event, event_id=f"EvCrowd{index}"))
            await asyncio.sleep(within_s / questions)
        return cls(fake, asked)

    def outcomes(self, user: str, ts: str) -> list[str]:
        """What one asker saw: a busy notice (from the bot's own bound, before any download: to them only;
        or from a full worker: in the thread), or the answer (the thread's message, reaction taken off)."""
        fake = self.fake
        told_busy = [call for call in fake.calls_to("chat.postEphemeral", user=user, thread_ts=ts)
                     if call.args.get("text") == BUSY]
        posts = [fake.shown_text(ASK_CHANNEL, post.result["ts"]) for post in fake.thread_posts(ASK_CHANNEL, ts)]
        done = any(call.args.get("timestamp") == ts for call in fake.calls_to("reactions.remove"))
        answers = [text for text in posts if text != BUSY] if done else []
        return ["busy"] * (len(told_busy) + posts.count(BUSY)) + ["answer"] * len(answers)

    def everyone_told(self) -> bool:
        return all(self.outcomes(user, ts) for user, ts in self.questions)

    def results(self) -> list[list[str]]:
        return [self.outcomes(user, ts) for user, ts in self.questions]
