"""Serving a fake on 127.0.0.1 at a port the OS picks, shared by every fake peer."""

from __future__ import annotations

from aiohttp import web


async def serve_on_loopback(app: web.Application) -> tuple[web.AppRunner, int]:
    """Start ``app`` on 127.0.0.1 with an ephemeral port; returns the runner (for cleanup) and the port."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def stop_serving(runner: web.AppRunner | None, sockets: list[web.WebSocketResponse]) -> None:
    """Close the open websockets first (so clients see a clean close), then the server."""
    for ws in list(sockets):
        await ws.close()
    if runner is not None:
        await runner.cleanup()
