"""Queue position in the placeholder and the busy message, on a worker that runs one request at a time."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from bot.chat.i18n import t
from bot.chat.messages import Failed, Final, Placeholder
from tests.bot.chat.conftest import ChatHarness, make_settings
from tests.support.shapes import dm
from tests.support.worker import run_worker


@pytest.fixture(scope="module")
def single_slot_worker(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    with run_worker(tiny_weights, tmp_path_factory.mktemp("single-slot"), max_batch_size=1, max_queue=2) as handle:
        yield handle


async def test_waiting_users_see_their_place_and_an_overflow_is_told_to_retry(
        single_slot_worker, tmp_path: Path) -> None:
    harness = await ChatHarness(make_settings(tmp_path, max_new_tokens=40), single_slot_worker.client).start()
    try:
        results = await asyncio.gather(*(harness.send(dm("discord", f"question {i}", user=f"U{i}", channel=f"D{i}",
                                                         locale="ja" if i == 3 else None))
                                         for i in range(6)))
    finally:
        await harness.stop()
    queued = [r for replies in results for r in replies if isinstance(r, Placeholder) and r.position]
    assert queued and all(r.text == t("queued", "en" if "#" in r.text else "ja", position=r.position) for r in queued)
    assert max(r.position for r in queued) >= 2
    busy = [replies[-1] for replies in results if isinstance(replies[-1], Failed)]
    answered = [replies[-1] for replies in results if isinstance(replies[-1], Final)]
    assert busy and answered and len(busy) + len(answered) == 6
    assert all(f.code == "busy" and re.search(r"Try again in \d+ s|\d+ 秒後", f.text) for f in busy)
