"""File downloads against the fake Slack: the bot token opens the file, anything else gets the sign-in page;
bodies arrive in pieces over time and are read to the end, within a size cap and a time limit (the
download routine is the one both platforms use)."""

from __future__ import annotations

import os
import time

import aiohttp
import pytest

from bot.adapters.downloads import Downloader
from bot.adapters.slack.files import FileAccessLog, SlackFileFetcher, is_login_page
from bot.chat.messages import AttachmentAccessError, AttachmentFetchError, AttachmentTooLarge
from tests.fakes.bodies import Delivery
from tests.fakes.slack_fake import BOT_TOKEN, FakeSlack

PNG_HEAD = b"\x89PNG\r\n\x1a\n"


def _fetcher(session: aiohttp.ClientSession, fake: FakeSlack, token: str = BOT_TOKEN, *, max_bytes: int = 1000,
             timeout_s: float = 30.0) -> SlackFileFetcher:
    return SlackFileFetcher(Downloader(session, max_bytes=max_bytes, timeout_s=timeout_s), bot_token=token,
                            api_base_url=fake.api_url)


async def _fetch(fake: FakeSlack, entry: dict, **options: object) -> bytes:
    async with aiohttp.ClientSession() as session:
        (ref,) = _fetcher(session, fake, **options).attachments([entry], access_log=FileAccessLog())
        return await ref.fetch()


async def test_the_bot_token_downloads_the_file(fake: FakeSlack) -> None:
    entry = fake.add_file("cat.png", "image/png", PNG_HEAD + b"rest")
    async with aiohttp.ClientSession() as session:
        (ref,) = _fetcher(session, fake).attachments([entry], access_log=FileAccessLog())
        assert (ref.filename, ref.declared_type, ref.declared_size) == ("cat.png", "image/png", 12)
        assert await ref.fetch() == PNG_HEAD + b"rest"
    assert fake.file_requests[0]["authorization"] == f"Bearer {BOT_TOKEN}"


async def test_a_photo_arriving_in_small_pieces_over_time_is_read_to_the_end(fake: FakeSlack) -> None:
    photo = PNG_HEAD + os.urandom(3_000_000)
    entry = fake.add_file("big.png", "image/png", photo,
                          delivery=Delivery.spread_over(len(photo), 1.0, chunk_bytes=16 * 1024))
    started = time.monotonic()
    assert await _fetch(fake, entry, max_bytes=5_000_000) == photo
    assert time.monotonic() - started >= 0.8, "the body really came in over time"


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked-encoding"])
async def test_a_body_over_the_cap_is_refused_without_reading_it_to_the_end(fake: FakeSlack,
                                                                           declare_length: bool) -> None:
    body = PNG_HEAD + bytes(3_000_000)
    entry = fake.add_file("huge.png", "image/png", body, declared_size=100,  # the event's size lies
                          delivery=Delivery(chunk_bytes=64 * 1024, pause_s=0.001, declare_length=declare_length))
    with pytest.raises(AttachmentTooLarge):
        await _fetch(fake, entry, max_bytes=1_000_000)
    sent = fake.file_bodies[entry["id"]]
    assert not sent.complete and sent.sent < len(body)


async def test_a_connection_dropped_mid_body_is_a_fetch_error(fake: FakeSlack) -> None:
    entry = fake.add_file("cut.png", "image/png", PNG_HEAD + bytes(200_000), delivery=Delivery(break_after=64 * 1024))
    with pytest.raises(AttachmentFetchError):
        await _fetch(fake, entry, max_bytes=1_000_000)


async def test_a_stalled_download_gives_up_at_its_time_limit(fake: FakeSlack) -> None:
    entry = fake.add_file("slow.png", "image/png", PNG_HEAD + bytes(200_000), delivery=Delivery(stall_after=32 * 1024))
    started = time.monotonic()
    with pytest.raises(AttachmentFetchError):
        await _fetch(fake, entry, max_bytes=1_000_000, timeout_s=0.5)
    assert time.monotonic() - started < 5


async def test_a_sign_in_page_is_no_access_and_is_logged(fake: FakeSlack) -> None:
    entry = fake.add_file("cat.png", "image/png", PNG_HEAD + b"rest")
    log = FileAccessLog()
    async with aiohttp.ClientSession() as session:
        (ref,) = _fetcher(session, fake, token="xoxb-wrong").attachments([entry], access_log=log)
        with pytest.raises(AttachmentAccessError):
            await ref.fetch()
    assert log.denied == ["cat.png"] and log.needs_explaining() and not log.needs_explaining()


async def test_the_token_is_never_sent_to_a_foreign_host(fake: FakeSlack) -> None:
    entry = {"id": "F1", "name": "x.png", "mimetype": "image/png", "size": 3,
             "url_private_download": "https://evil.example/x.png"}
    with pytest.raises(AttachmentAccessError):
        await _fetch(fake, entry)
    assert fake.file_requests == []


def test_login_page_detection_by_type_or_body() -> None:
    assert is_login_page("text/html; charset=utf-8", b"\x89PNG")
    assert is_login_page("application/octet-stream", b"  <!DOCTYPE html><html>")
    assert is_login_page(None, b"<HTML><body>")
    assert not is_login_page("image/png", b"\x89PNG\r\n")
