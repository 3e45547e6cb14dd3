"""Discord errors as the operator needs them: one log line that says what to fix (never a token).

The failures themselves become user text in one place, :func:`bot.adapters.reporting.report_failure`.
"""

from __future__ import annotations

import aiohttp
import discord

#: What Discord or the network may raise while answering, after discord.py's own retries.
DISCORD_ERRORS: tuple[type[Exception], ...] = (discord.DiscordException, aiohttp.ClientError, TimeoutError)

_OPERATOR_HINTS = {
    50001: "missing access: the bot cannot see that channel",
    50013: "missing permissions: check the bot's role (send messages, threads) in that channel",
    10003: "unknown channel: it was deleted",
    10008: "unknown message: it was deleted",
}


def describe_for_log(exc: BaseException) -> str:
    """A one-line operator description of a Discord failure."""
    if isinstance(exc, discord.HTTPException):
        hint = _OPERATOR_HINTS.get(exc.code)
        return f"Discord answered HTTP {exc.status} (code {exc.code})" + (f": {hint}" if hint else "")
    return type(exc).__name__


def can_still_post(exc: BaseException) -> bool:
    """False when ``exc`` says the bot may not post where it was answering."""
    return not isinstance(exc, discord.Forbidden)
