"""Fixtures for the Discord adapter tests: the fake Discord and a recording client of the real worker."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakes.discord_fake import FakeDiscord
from tests.support.recording import RecordingWorker


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    fake = await FakeDiscord().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def recording_worker(worker) -> AsyncIterator[RecordingWorker]:
    client = RecordingWorker(worker.client())
    yield client
    await client.close()
