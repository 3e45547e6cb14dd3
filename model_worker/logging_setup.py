"""Levelled, one-line-per-event logging with secrets masked, for both processes (bot and worker)."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from pathlib import Path

_TOKEN_SHAPES = re.compile(
    r"(xox[abposr]-[A-Za-z0-9-]{8,}|xapp-[A-Za-z0-9-]{8,}"  # Slack bot/user/app tokens
    r"|[MNO][A-Za-z\d_-]{23,25}\.[A-Za-z\d_-]{6}\.[A-Za-z\d_-]{27,}"  # Discord bot tokens
    r"|(?<=redis://:)[^@\s]+(?=@)|(?<=rediss://:)[^@\s]+(?=@)"  # passwords in Redis URLs
    r"|(?<=Bearer )[A-Za-z0-9._~+/=-]{8,})"
)


class SecretMasker(logging.Filter):
    """Replace configured secret values and anything shaped like a token with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return _TOKEN_SHAPES.sub("***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = self.mask(message)
        if record.exc_info and record.exc_info[1] is not None:
            masked += "\n" + self.mask(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        record.msg, record.args = masked.replace("\n", "\n    "), None
        return True


def configure_logging(level: str = "INFO", *, secrets: Iterable[str] = (), stream=None,
                      log_file: Path | None = None) -> None:
    """Send ``level`` and above to stderr as ``time level logger: message``, secrets masked.

    With ``log_file`` (the console chat, where log lines would interleave with the conversation) the
    log goes to that file and only warnings and errors reach stderr."""
    masker = SecretMasker(secrets)
    formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers[0].setLevel(logging.WARNING)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(masker)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level.upper())
    for noisy in ("discord.gateway", "discord.client", "slack_bolt", "slack_sdk", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
