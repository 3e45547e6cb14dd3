from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.worker_client.http import HttpWorkerClient
from tests.fakes.slack_fake import FakeSlack


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    fake = FakeSlack()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def idle_worker(tmp_path: Path) -> AsyncIterator[HttpWorkerClient]:
    """A real client for scenarios the bot answers without the model (no worker listens behind it)."""
    client = HttpWorkerClient(f"unix:{tmp_path / 'no-worker.sock'}", connect_attempts=1)
    yield client
    await client.close()


@pytest.fixture
async def live_worker(worker) -> AsyncIterator[HttpWorkerClient]:
    """A client of the session's real worker process (tiny random weights)."""
    client = worker.client()
    yield client
    await client.close()
