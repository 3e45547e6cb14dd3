"""Remote image downloads keep their bounds (size, time, type, count) against an unkind web server on
loopback: bodies that arrive in pieces over time, that lie about nothing or about their type, that hang."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from model_worker.serve.front_end import Malformed
from model_worker.serve.remote_images import RemoteImageFetcher
from tests.fakes.loopback import serve_on_loopback
from tests.support.images import png
from tests.support.ports import free_port

PICTURE = png((10, 200, 120))
LIMIT = 50_000


async def picture(request: web.Request) -> web.Response:
    return web.Response(body=PICTURE, content_type=request.query.get("type", "image/png"))


async def in_pieces(request: web.Request) -> web.StreamResponse:
    """A chunked body (no length declared) of ``size`` bytes, 8 KB at a time with pauses."""
    response = web.StreamResponse(headers={"Content-Type": "image/png"})
    await response.prepare(request)
    for _ in range(int(request.query["size"]) // 8192):
        await response.write(bytes(8192))
        await asyncio.sleep(0.005)
    return response


async def declared_too_large(request: web.Request) -> web.Response:
    return web.Response(body=bytes(LIMIT + 1), content_type="image/jpeg")


async def hangs(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "image/png"})
    await response.prepare(request)
    await response.write(PICTURE[:100])
    await asyncio.sleep(2)  # four times the fetcher's time limit
    return response


async def missing(request: web.Request) -> web.Response:
    return web.Response(status=404, text="no such picture")


@pytest.fixture
async def server():
    app = web.Application()
    for path, handler in {"/picture": picture, "/pieces": in_pieces, "/declared": declared_too_large,
                          "/hangs": hangs, "/missing": missing}.items():
        app.router.add_get(path, handler)
    runner, port = await serve_on_loopback(app)
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def fetcher():
    fetcher = RemoteImageFetcher(max_bytes=LIMIT, timeout_s=0.5, max_images=2)
    yield fetcher
    await fetcher.close()


@pytest.mark.parametrize("declared", ["image/png", "application/octet-stream"])
async def test_a_picture_is_fetched_whole(server, fetcher, declared):
    ref = await fetcher.fetch(f"{server}/picture?type={declared}")
    assert ref.decode() == PICTURE


async def test_a_body_within_the_limit_arriving_in_pieces_is_fetched(server, fetcher):
    assert len((await fetcher.fetch(f"{server}/pieces?size=40960")).decode()) == 40960


@pytest.mark.parametrize(("path", "why"), [
    ("/pieces?size=500000", "larger than 0.05 MB"),  # no length declared: stopped once past the limit
    ("/declared", "larger than 0.05 MB"),
    ("/picture?type=text/html", "text/html, not an image"),
    ("/missing", "HTTP 404"),
    ("/hangs", "did not arrive within 0.5 s"),
])
async def test_a_download_beyond_its_bounds_is_refused(server, fetcher, path, why):
    with pytest.raises(Malformed) as caught:
        await fetcher.fetch(f"{server}{path}")
    assert why in str(caught.value) and caught.value.status == 400


async def test_an_unreachable_host_is_refused(fetcher):
    with pytest.raises(Malformed, match="could not be fetched"):
        await fetcher.fetch(f"http://127.0.0.1:{free_port()}/x.png")


async def test_more_images_than_allowed_are_refused_before_any_download(server, fetcher):
    with pytest.raises(Malformed, match="at most 2 remote images"):
        await fetcher.fetch_all([f"{server}/hangs", f"{server}/hangs", f"{server}/hangs"])
    fetched = await fetcher.fetch_all([f"{server}/picture", f"{server}/picture?type=image/webp"])
    assert len(fetched) == 2


async def test_the_url_is_never_logged_whole(server, fetcher, caplog):
    with caplog.at_level(logging.DEBUG, logger="model_worker"):
        await fetcher.fetch(f"{server}/picture?token=signed-secret")
        with pytest.raises(Malformed):
            await fetcher.fetch(f"{server}/missing?token=signed-secret")
    worker_lines = [r.getMessage() for r in caplog.records if r.name.startswith("model_worker")]
    assert len(worker_lines) == 2 and all("127.0.0.1" in line for line in worker_lines)
    assert not any("signed-secret" in line for line in worker_lines)
