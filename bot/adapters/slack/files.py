"""Slack files: download with the bot token, and tell a real file from Slack's sign-in page.

Without the ``files:read`` scope (or when the file was not shared where the bot can see it) Slack answers
``200 OK`` with an HTML sign-in page instead of the file, so the body is checked, not only the status.
The download itself (chunks, size cap, time limit) is :class:`~bot.adapters.downloads.Downloader`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from bot.adapters.downloads import Downloader
from bot.chat.messages import AttachmentAccessError, AttachmentRef

log = logging.getLogger(__name__)

_HTML_STARTS = (b"<!doctype", b"<html")


@dataclass
class FileAccessLog:
    """The files of one post that Slack would not give us (to explain why, once, in the reply)."""

    denied: list[str] = field(default_factory=list)
    explained: bool = False

    def needs_explaining(self) -> bool:
        """True the first time it is asked after a file was denied."""
        if not self.denied or self.explained:
            return False
        self.explained = True
        return True


class SlackFileFetcher:
    """Downloads ``url_private_download`` files; the bot token is sent only to Slack's own hosts."""

    def __init__(self, downloader: Downloader, *, bot_token: str, api_base_url: str) -> None:
        self._downloader = downloader
        self._bot_token = bot_token
        # the configured API host (a proxy or a local fake) is trusted like slack.com
        self._trusted_host = urlsplit(api_base_url).hostname or "slack.com"

    def attachments(self, files: list[Mapping[str, Any]], *,
                    access_log: FileAccessLog) -> tuple[AttachmentRef, ...]:
        """One :class:`AttachmentRef` per entry of an event's ``files[]``; nothing is downloaded yet."""
        return tuple(self._attachment(entry, access_log) for entry in files)

    def _attachment(self, entry: Mapping[str, Any], access_log: FileAccessLog) -> AttachmentRef:
        url = entry.get("url_private_download") or entry.get("url_private")
        name = str(entry.get("name") or entry.get("id") or "file")
        return AttachmentRef(
            filename=name,
            declared_type=entry.get("mimetype"),
            declared_size=entry.get("size"),
            fetch=partial(self._logged_download, url, name, access_log),
            width=entry.get("original_w"),
            height=entry.get("original_h"),
        )

    async def _logged_download(self, url: str | None, name: str, access_log: FileAccessLog) -> bytes:
        try:
            return await self.download(url, name)
        except AttachmentAccessError:
            access_log.denied.append(name)
            raise

    async def download(self, url: str | None, file_id: str) -> bytes:
        """The file's bytes; :class:`AttachmentAccessError` when Slack refuses (other
        :class:`~bot.chat.messages.AttachmentError` subclasses for size and network trouble)."""
        if not url or not self._may_send_token_to(url):
            log.warning("slack file %s: no downloadable URL on a Slack host", file_id)
            raise AttachmentAccessError(f"file {file_id} has no usable URL")
        body = await self._downloader.fetch(url, name=file_id,
                                            headers={"Authorization": f"Bearer {self._bot_token}"})
        if is_login_page(body.content_type, body.data):
            log.warning("slack file %s: got the sign-in page (files:read scope or sharing missing)", file_id)
            raise AttachmentAccessError(f"file {file_id}: no access")
        return body.data

    def _may_send_token_to(self, url: str) -> bool:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host == self._trusted_host:
            return parts.scheme in ("http", "https")
        return parts.scheme == "https" and (host == "slack.com" or host.endswith(".slack.com"))


def is_login_page(content_type: str | None, body: bytes) -> bool:
    """True when a file download came back as an HTML page (Slack's sign-in page)."""
    if content_type and content_type.split(";")[0].strip().lower() == "text/html":
        return True
    return body[:64].lstrip().lower().startswith(_HTML_STARTS)
