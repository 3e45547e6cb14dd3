"""Levelled, one-line-per-event logging with secrets masked, for both processes (bot and worker).

Generic: it masks configured secret values and the secret shapes every deployment has (bearer tokens,
passwords in URLs); each process adds the token shapes it knows (the bot: Discord's and Slack's).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from pathlib import Path

#: Secret shapes masked in every process: the password in ``scheme://[user]:password@host`` and bearer tokens.
GENERIC_SECRET_SHAPES = (
    r"(?<=://)[^:/@\s]*:[^@\s]+(?=@)",
    r"(?<=Bearer )[A-Za-z0-9._~+/=-]{8,}",
)


class SecretMasker(logging.Filter):
    """Replace configured secret values and anything shaped like a token with ``***``."""

    def __init__(self, secrets: Iterable[str] = (), shapes: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        self._shapes = re.compile("|".join(f"(?:{shape})" for shape in (*GENERIC_SECRET_SHAPES, *shapes)))

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return self._shapes.sub("***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = self.mask(message)
        if record.exc_info and record.exc_info[1] is not None:
            masked += "\n" + self.mask(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        record.msg, record.args = masked.replace("\n", "\n    "), None
        return True


def configure_logging(level: str = "INFO", *, secrets: Iterable[str] = (), secret_shapes: Iterable[str] = (),
                      quiet_loggers: Iterable[str] = (), stream=None, log_file: Path | None = None) -> None:
    """Send ``level`` and above to stderr as ``time level logger: message``, with ``secrets`` (values) and
    ``secret_shapes`` (regular expressions) masked; ``quiet_loggers`` log warnings and errors only.

    With ``log_file`` (the console chat, where log lines would interleave with the conversation) the
    log goes to that file and only warnings and errors reach stderr."""
    masker = SecretMasker(secrets, secret_shapes)
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
    for noisy in ("aiohttp.access", *quiet_loggers):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
