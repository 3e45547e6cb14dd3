"""Terminal chat through the same chat service as Discord and Slack (``python -m bot console``).

Lines are messages; ``/image PATH`` attaches an image to the next message, ``/reset`` starts over,
``/help`` shows usage, ``/quit`` (or end of input) leaves. The console is one DM-like conversation.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import sys
import threading
import uuid
from pathlib import Path
from typing import TextIO

from bot.chat.i18n import t
from bot.chat.messages import (
    AttachmentRef,
    Failed,
    Final,
    IncomingMessage,
    Notice,
    Placeholder,
    PlatformProfile,
    Reply,
    Streaming,
)
from bot.chat.service import ChatService

log = logging.getLogger(__name__)

CONSOLE_PROFILE = PlatformProfile(platform="console", max_message_chars=1_000_000, edit_interval_s=0.0,
                                  markup="plain")


async def run_console(service: ChatService, *, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout,
                      user: str | None = None, locale: str | None = None) -> int:
    """Chat in the terminal until ``/quit`` or end of input; returns the exit status (0)."""
    session = _ConsoleSession(service, stdout, user or _login_name(), locale)
    session.say(t("console_welcome", session.lang))
    lines = _LineReader(stdin)
    while True:
        session.prompt()
        line = await lines.next()
        if line is None or not await session.on_line(line.strip()):
            break
    session.say(t("console_bye", session.lang))
    return 0


class _ConsoleSession:
    def __init__(self, service: ChatService, stdout: TextIO, user: str, locale: str | None) -> None:
        self._service = service
        self._out = stdout
        self._user = user
        self._locale = locale
        self.lang = service.language_for(locale)
        self._pending: list[AttachmentRef] = []
        self._shown = ""  # the answer text already printed for the current request

    def say(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def prompt(self) -> None:
        self._out.write(t("console_prompt", self.lang))
        self._out.flush()

    async def on_line(self, line: str) -> bool:
        """Handle one input line; ``False`` means leave."""
        if not line:
            return True
        word, _, argument = line.partition(" ")
        if word == "/quit":
            return False
        if word == "/image":
            await self._attach(argument.strip())
        elif word in ("/reset", "/help"):
            await self._render_all(self._service.run_command(word[1:], self._message(""), CONSOLE_PROFILE))
        elif word.startswith("/") and word.count("/") == 1:
            self.say(t("console_unknown_command", self.lang, command=word))
        else:
            await self._send(line)
        return True

    async def _attach(self, argument: str) -> None:
        attachment = await asyncio.to_thread(_attachment, argument)
        if attachment is None:
            self.say(t("console_image_missing", self.lang, path=argument))
            return
        self._pending.append(attachment)
        self.say(t("console_image_attached", self.lang, path=argument))

    async def _send(self, text: str) -> None:
        message = self._message(text, attachments=tuple(self._pending))
        self._pending.clear()
        await self._render_all(self._service.handle(message, CONSOLE_PROFILE))

    def _message(self, text: str, attachments: tuple[AttachmentRef, ...] = ()) -> IncomingMessage:
        return IncomingMessage(platform="console", workspace_id=None, channel_id="console", thread_id=None,
                               message_id=uuid.uuid4().hex, author_id=self._user, author_name=self._user,
                               text=text, attachments=attachments, mentioned=True, is_dm=True,
                               locale=self._locale)

    async def _render_all(self, replies) -> None:
        self._shown = ""
        async for reply in replies:
            self._render(reply)

    def _render(self, reply: Reply) -> None:
        if isinstance(reply, Notice | Failed):
            self.say(reply.text)
        elif isinstance(reply, Placeholder):
            self.say(f"[{reply.text}]")
        elif isinstance(reply, Streaming):
            self._print_progress("".join(reply.parts))
        elif isinstance(reply, Final):
            self._print_progress("".join(reply.parts))
            self._out.write("\n")
            self._out.flush()

    def _print_progress(self, text: str) -> None:
        """Print what is new since the last update (the whole text again if the answer restarted)."""
        if text.startswith(self._shown):
            self._out.write(text[len(self._shown):])
        else:
            self._out.write("\n" + text)
        self._shown = text
        self._out.flush()


def _attachment(argument: str) -> AttachmentRef | None:
    """An attachment for a local file (blocking: run in a thread), or ``None`` if it cannot be read."""
    path = Path(argument).expanduser()
    if not argument or not path.is_file():
        return None

    async def fetch() -> bytes:
        return await asyncio.to_thread(path.read_bytes)

    return AttachmentRef(filename=path.name, declared_type=None, declared_size=path.stat().st_size, fetch=fetch)


class _LineReader:
    """Reads lines on a daemon thread, so a blocked ``readline`` never holds up shutdown."""

    def __init__(self, stdin: TextIO) -> None:
        self._loop = asyncio.get_running_loop()
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        threading.Thread(target=self._read, args=(stdin,), name="console-stdin", daemon=True).start()

    def _read(self, stdin: TextIO) -> None:
        try:
            for line in iter(stdin.readline, ""):
                self._loop.call_soon_threadsafe(self._lines.put_nowait, line)
        except (OSError, ValueError) as exc:
            log.warning("console input closed: %r", exc)
        finally:
            self._loop.call_soon_threadsafe(self._lines.put_nowait, None)

    async def next(self) -> str | None:
        return await self._lines.get()


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "console"
