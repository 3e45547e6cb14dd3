"""File downloads against the fake Slack: the bot token opens the file; anything else gets the sign-in page."""

from __future__ import annotations

import aiohttp
import pytest

from bot.adapters.slack.files import FileAccessLog, SlackFileFetcher, is_login_page
from bot.chat.messages import AttachmentAccessError
from tests.fakes.slack_fake import BOT_TOKEN, FakeSlack


@pytest.fixture
async def fake() -> FakeSlack:
    fake = FakeSlack()
    await fake.start()
    yield fake
    await fake.stop()


def _fetcher(session: aiohttp.ClientSession, fake: FakeSlack, token: str = BOT_TOKEN) -> SlackFileFetcher:
    return SlackFileFetcher(session, bot_token=token, api_base_url=fake.api_url, max_bytes=1000)


async def test_the_bot_token_downloads_the_file(fake: FakeSlack) -> None:
    entry = fake.add_file("cat.png", "image/png", b"\x89PNG\r\n\x1a\nrest")
    async with aiohttp.ClientSession() as session:
        (ref,) = _fetcher(session, fake).attachments([entry], access_log=FileAccessLog())
        assert (ref.filename, ref.declared_type, ref.declared_size) == ("cat.png", "image/png", 12)
        assert await ref.fetch() == b"\x89PNG\r\n\x1a\nrest"
    assert fake.file_requests[0]["authorization"] == f"Bearer {BOT_TOKEN}"


async def test_a_sign_in_page_is_no_access_and_is_logged(fake: FakeSlack) -> None:
    entry = fake.add_file("cat.png", "image/png", b"\x89PNG\r\n\x1a\nrest")
    log = FileAccessLog()
    async with aiohttp.ClientSession() as session:
        (ref,) = _fetcher(session, fake, token="xoxb-wrong").attachments([entry], access_log=log)
        with pytest.raises(AttachmentAccessError):
            await ref.fetch()
    assert log.denied == ["cat.png"] and log.needs_explaining() and not log.needs_explaining()


async def test_oversized_downloads_stop_one_byte_past_the_limit(fake: FakeSlack) -> None:
    entry = fake.add_file("big.png", "image/png", b"\x89PNG\r\n\x1a\n" + b"x" * 5000)
    async with aiohttp.ClientSession() as session:
        (ref,) = _fetcher(session, fake).attachments([entry], access_log=FileAccessLog())
        assert len(await ref.fetch()) == 1001


async def test_the_token_is_never_sent_to_a_foreign_host(fake: FakeSlack) -> None:
    entry = {"id": "F1", "name": "x.png", "mimetype": "image/png", "size": 3,
             "url_private_download": "https://evil.example/x.png"}
    async with aiohttp.ClientSession() as session:
        (ref,) = _fetcher(session, fake).attachments([entry], access_log=FileAccessLog())
        with pytest.raises(AttachmentAccessError):
            await ref.fetch()
    assert fake.file_requests == []


def test_login_page_detection_by_type_or_body() -> None:
    assert is_login_page("text/html; charset=utf-8", b"\x89PNG")
    assert is_login_page("application/octet-stream", b"  <!DOCTYPE html><html>")
    assert is_login_page(None, b"<HTML><body>")
    assert not is_login_page("image/png", b"\x89PNG\r\n")
