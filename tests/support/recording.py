"""A real worker client that also keeps what went through it, for tests to assert on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from bot.worker_client.base import WorkerClient
from model_worker.wire.protocol import ChatRequest, DoneEvent, Event, ReadyInfo


@dataclass
class RecordingWorker:
    """Wraps a real :class:`WorkerClient`: every request sent and every ``done`` received are kept."""

    inner: WorkerClient
    requests: list[ChatRequest] = field(default_factory=list)
    answers: list[DoneEvent] = field(default_factory=list)

    async def chat(self, request: ChatRequest) -> AsyncIterator[Event]:
        self.requests.append(request)
        async for event in self.inner.chat(request):
            if isinstance(event, DoneEvent):
                self.answers.append(event)
            yield event

    async def cancel(self, request_id: str) -> None:
        await self.inner.cancel(request_id)

    async def ready(self) -> ReadyInfo:
        return await self.inner.ready()

    async def close(self) -> None:
        await self.inner.close()
