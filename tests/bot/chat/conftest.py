"""Chat service fixtures: real SQLite, the real worker process (tiny weights) behind its real client."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from bot.adapters.discord.listeners import PROFILE as DISCORD_ADAPTER_PROFILE
from bot.adapters.slack.listeners import SLACK_PROFILE as SLACK_ADAPTER_PROFILE
from bot.chat.messages import IncomingMessage, PlatformProfile, Reply
from bot.chat.service import ChatService
from bot.chat.store import Store
from bot.settings import Settings
from model_worker.wire.protocol import ChatRequest
from tests.support.recording import RecordingWorker

# The adapters' own profiles, without the pause between streamed edits (these tests read every event).
DISCORD_PROFILE: PlatformProfile = replace(DISCORD_ADAPTER_PROFILE, edit_interval_s=0.0)
SLACK_PROFILE: PlatformProfile = replace(SLACK_ADAPTER_PROFILE, edit_interval_s=0.0)


@dataclass
class ChatHarness:
    """A service over a store file and a recording client; ``restart`` reopens both like a new process."""

    settings: Settings
    worker_client_factory: object
    store: Store | None = None
    worker: RecordingWorker | None = None
    service: ChatService | None = None
    requests: list[ChatRequest] = field(default_factory=list)
    service_options: dict[str, object] = field(default_factory=dict)

    async def start(self) -> ChatHarness:
        self.store = await Store.open(self.settings.database_path)
        self.worker = RecordingWorker(self.worker_client_factory())
        self.worker.requests = self.requests  # one record across restarts
        self.service = ChatService(settings=self.settings, store=self.store, worker=self.worker,
                                   **self.service_options)
        return self

    async def stop(self) -> None:
        await self.worker.close()
        await self.store.close()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def send(self, message: IncomingMessage, profile: PlatformProfile = DISCORD_PROFILE) -> list[Reply]:
        return [reply async for reply in self.service.handle(message, profile)]


def make_settings(data_dir: Path, **values: object) -> Settings:
    defaults: dict[str, object] = {"data_dir": data_dir, "max_new_tokens": 6, "rate_limit_burst": 50,
                                   "rate_limit_per_minute": 600, "max_in_flight_per_user": 4}
    return Settings(_env_file=None, **{**defaults, **values})


@pytest.fixture
async def harness_factory(tmp_path: Path, worker):
    """Build harnesses on the session's real worker; each is stopped at the end of the test."""
    started: list[ChatHarness] = []

    async def build(client_factory=None, service_options: dict | None = None, **settings: object) -> ChatHarness:
        harness = ChatHarness(make_settings(tmp_path / f"data{len(started)}", **settings),
                              client_factory or worker.client, service_options=service_options or {})
        started.append(harness)
        return await harness.start()

    yield build
    for harness in started:
        await harness.stop()


@pytest.fixture
async def harness(harness_factory) -> ChatHarness:
    return await harness_factory()
