"""The bot's logging: the shared one-line format (``model_worker.wire.logs``) plus what only the bot knows,
its platforms' token shapes and secret settings, and which chatty client libraries to quieten."""

from __future__ import annotations

from pathlib import Path

from bot.settings import Settings
from model_worker.wire.logs import configure_logging

#: Token shapes of the platforms the bot talks to, masked wherever they appear in a log line.
PLATFORM_TOKEN_SHAPES = (
    r"xox[abposr]-[A-Za-z0-9-]{8,}",  # Slack bot and user tokens
    r"xapp-[A-Za-z0-9-]{8,}",  # Slack app-level tokens
    r"[MNO][A-Za-z\d_-]{23,25}\.[A-Za-z\d_-]{6}\.[A-Za-z\d_-]{27,}",  # Discord bot tokens
)
_CHATTY_LOGGERS = ("discord.gateway", "discord.client", "slack_bolt", "slack_sdk")


def configure_bot_logging(settings: Settings, *, log_file: Path | None = None) -> None:
    """Log at ``LOG_LEVEL`` with every secret setting and platform token masked (to ``log_file`` if given)."""
    configure_logging(settings.log_level, secrets=secret_values(settings), secret_shapes=PLATFORM_TOKEN_SHAPES,
                      quiet_loggers=_CHATTY_LOGGERS, log_file=log_file)


def secret_values(settings: Settings) -> list[str]:
    """The values of every secret setting that is set."""
    fields = (settings.discord_token, settings.slack_bot_token, settings.slack_app_token,
              settings.slack_signing_secret, settings.worker_token, settings.queue_url)
    return [field.get_secret_value() for field in fields if field is not None]
