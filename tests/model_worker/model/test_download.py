"""``download``: fail fast offline with a useful message; resume and verify against a local HTTP server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from aiohttp import web

from model_worker.model.download import ARTEFACTS, DownloadError, HubFile, UrlFile, download_all, fetch_url
from tests.support.ports import free_port

CONTENT = os.urandom(300_000)


class FileServer:
    """Serves CONTENT at /file with Range support; can cut the body short or lie about the hash."""

    def __init__(self) -> None:
        self.cut_after: int | None = None
        self.bad_hash = False
        self.ranges: list[str | None] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.ranges.append(request.headers.get("Range"))
        start = int(request.headers["Range"].split("=")[1].rstrip("-")) if "Range" in request.headers else 0
        md5 = hashlib.md5(b"other" if self.bad_hash else CONTENT).digest()
        headers = {"x-goog-hash": f"crc32c=AAAAAA==, md5={base64.b64encode(md5).decode()}",
                   "Content-Length": str(len(CONTENT) - start)}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(CONTENT) - 1}/{len(CONTENT)}"
        response = web.StreamResponse(status=206 if start else 200, headers=headers)
        await response.prepare(request)
        body = CONTENT[start:]
        if self.cut_after is not None:
            await response.write(body[: self.cut_after])
            request.transport.close()  # drop the connection mid-body
            return response
        await response.write(body)
        await response.write_eof()
        return response


@contextmanager
def serve_app(app: web.Application) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 from a background thread (the download code is synchronous)."""
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


@contextmanager
def serve(handler: FileServer) -> Iterator[str]:
    app = web.Application()
    app.router.add_get("/file", handler.handle)
    with serve_app(app) as base_url:
        yield f"{base_url}/file"


def test_interrupted_download_resumes_and_verifies(tmp_path):
    server = FileServer()
    target = tmp_path / "eva_vit_g.pth"
    with serve(server) as url:
        server.cut_after = 100_000
        with pytest.raises(DownloadError, match="run again to resume"):
            fetch_url(url, target, timeout=5)
        partial = (tmp_path / "eva_vit_g.pth.part").stat().st_size
        assert 0 < partial < len(CONTENT) and not target.exists()
        server.cut_after = None
        fetch_url(url, target, timeout=5)
    assert server.ranges == [None, f"bytes={partial}-"]
    assert target.read_bytes() == CONTENT and not (tmp_path / "eva_vit_g.pth.part").exists()


def test_hash_mismatch_is_refused_and_the_file_removed(tmp_path):
    server = FileServer()
    server.bad_hash = True
    with serve(server) as url, pytest.raises(DownloadError, match="failed its check"):
        fetch_url(url, tmp_path / "x.pth", timeout=5)
    assert not list(tmp_path.iterdir())


def test_known_sha256_is_checked(tmp_path):
    with serve(FileServer()) as url:
        fetch_url(url, tmp_path / "ok.pth", sha256=hashlib.sha256(CONTENT).hexdigest(), timeout=5)
        with pytest.raises(DownloadError, match="hash"):
            fetch_url(url, tmp_path / "bad.pth", sha256="0" * 64, timeout=5)
    assert (tmp_path / "ok.pth").read_bytes() == CONTENT and not (tmp_path / "bad.pth").exists()


def test_download_all_fetches_only_missing_url_files(tmp_path):
    server = FileServer()
    with serve(server) as url:
        files = (UrlFile("a.pth", url), UrlFile("sub/b.pth", url))
        (tmp_path / "a.pth").write_bytes(b"already here")
        download_all(tmp_path, files=files, timeout=5)
    assert (tmp_path / "a.pth").read_bytes() == b"already here"
    assert (tmp_path / "sub" / "b.pth").read_bytes() == CONTENT and len(server.ranges) == 1


def test_offline_fails_fast_listing_missing_files(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    files = tuple(UrlFile(f.dest, f"{closed}/{f.dest}") if isinstance(f, UrlFile) else f for f in ARTEFACTS)
    (tmp_path / "gpt-neox").mkdir()
    (tmp_path / "gpt-neox" / "config.json").write_text("{}")
    started = time.perf_counter()
    with pytest.raises(DownloadError) as info:
        download_all(tmp_path, files=files, hub_endpoint=closed, timeout=2)
    assert time.perf_counter() - started < 5
    message = str(info.value)
    assert "no network" in message
    for item in files:
        if item.dest != "gpt-neox/config.json":
            assert item.dest in message and (item.where() if isinstance(item, UrlFile) else item.where(closed)) in message
    assert "gpt-neox/config.json" not in message
    assert any(isinstance(f, HubFile) and f.repo_id == "rinna/bilingual-gpt-neox-4b" for f in ARTEFACTS)


def test_download_command_offline(tmp_path, capsys):
    from model_worker.__main__ import main

    closed = f"http://127.0.0.1:{free_port()}"
    code = main(["download", "--dest", str(tmp_path), "--hub-endpoint", closed, "--lavis-base-url", closed,
                 "--timeout", "2"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: cannot reach 127.0.0.1:")
    assert f"{closed}/eva_vit_g.pth" in err
    assert f"{closed}/rinna/bilingual-gpt-neox-4b/resolve/main/model.safetensors" in err


class TinyMirror:
    """A loopback stand-in for both origins, serving a make-tiny directory: the LAVIS files under
    /lavis/<name>, and the two rinna repositories the way the hub's ``resolve`` route does."""

    REPOS = {"rinna/bilingual-gpt-neox-4b-minigpt4": "", "rinna/bilingual-gpt-neox-4b": "gpt-neox/"}

    def __init__(self, root) -> None:
        self.root = root
        self.requests: list[str] = []

    async def lavis(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        return web.FileResponse(self.root / request.match_info["name"])

    async def hub(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        repo = f"{request.match_info['org']}/{request.match_info['repo']}"
        path = self.root / (self.REPOS[repo] + request.match_info["name"])
        data = path.read_bytes()
        headers = {"X-Repo-Commit": "0" * 40, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(len(data))})
        return web.Response(body=data, headers=headers)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/lavis/{name}", self.lavis)
        app.router.add_route("*", "/{org}/{repo}/resolve/{revision}/{name}", self.hub)
        return app


def test_download_command_fills_a_loadable_weights_dir(weights_copy, tmp_path, monkeypatch):
    from model_worker.__main__ import main
    from model_worker.model.loader import load_model

    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    mirror = TinyMirror(weights_copy)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "arch.json").write_bytes((weights_copy / "arch.json").read_bytes())  # tiny sizes, not the real ones
    with serve_app(mirror.app()) as base:
        assert main(["download", "--dest", str(dest), "--hub-endpoint", base, "--lavis-base-url", f"{base}/lavis",
                     "--timeout", "5"]) == 0
        fetched = len(mirror.requests)
        assert main(["download", "--dest", str(dest), "--hub-endpoint", base, "--lavis-base-url", f"{base}/lavis"]) == 0
        assert len(mirror.requests) == fetched  # nothing missing: nothing fetched again
    for name in ("eva_vit_g.pth", "blip2_pretrained_flant5xxl.pth", "checkpoint.pth", "gpt-neox/model.safetensors",
                 "gpt-neox/spiece.model", "gpt-neox/config.json", "gpt-neox/tokenizer_config.json"):
        assert (dest / name).read_bytes() == (weights_copy / name).read_bytes(), name
    assert load_model(dest, device="cpu", use_cache=False).arch.vision.width == 32


def test_downloads_are_pinned_after_the_first_and_a_changed_upstream_file_is_refused(weights_copy, tmp_path,
                                                                                      monkeypatch, capsys):
    from model_worker.__main__ import main
    from model_worker.model.download import read_pins

    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    mirror = TinyMirror(weights_copy)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "arch.json").write_bytes((weights_copy / "arch.json").read_bytes())
    command = ["download", "--dest", str(dest), "--lavis-base-url", "", "--timeout", "5"]
    with serve_app(mirror.app()) as base:
        command[command.index("--lavis-base-url") + 1] = f"{base}/lavis"
        assert main([*command, "--hub-endpoint", base]) == 0
        pins = read_pins(dest)
        assert pins["eva_vit_g.pth"] == hashlib.sha256((weights_copy / "eva_vit_g.pth").read_bytes()).hexdigest()
        assert pins["rinna/bilingual-gpt-neox-4b"] == "0" * 40  # the commit the hub answered with

        # Hub files missing later come from the pinned commit, whatever the newest is then.
        (dest / "gpt-neox" / "spiece.model").unlink()
        mirror.requests.clear()
        assert main([*command, "--hub-endpoint", base]) == 0
        assert any(f"/resolve/{'0' * 40}/spiece.model" in path for path in mirror.requests), mirror.requests

        # Upstream changes a LAVIS file: downloading it again is refused.
        (weights_copy / "eva_vit_g.pth").write_bytes(b"tampered" + (weights_copy / "eva_vit_g.pth").read_bytes())
        (dest / "eva_vit_g.pth").unlink()
        assert main([*command, "--hub-endpoint", base]) == 1
    assert "failed its check" in capsys.readouterr().err and not (dest / "eva_vit_g.pth").exists()
