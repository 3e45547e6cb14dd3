"""Slack Web API errors as the operator and the Slack adapter need them: the error code, a one-line log
description with what to do about it, and which errors leave the bot unable to post at all.

The failures themselves become user text in one place, :func:`bot.adapters.reporting.report_failure`.
"""

from __future__ import annotations

from slack_sdk.errors import SlackApiError

#: After these the bot cannot post in the conversation at all, so there is no point in telling the user.
CANNOT_POST = frozenset({"not_in_channel", "channel_not_found", "is_archived"})

_OPERATOR_HINTS = {
    "not_in_channel": "the bot is not a member of the channel; invite it with /invite",
    "channel_not_found": "the channel is gone or the bot cannot see it",
    "is_archived": "the channel is archived",
    "message_not_found": "the message was deleted",
    "ratelimited": "Slack kept answering 429 after the client's retries",
}


def slack_error_code(exc: SlackApiError) -> str:
    """Slack's error code (``not_in_channel``...), or the HTTP status when the body was not JSON."""
    data = exc.response.data
    if isinstance(data, dict) and data.get("error"):
        return str(data["error"])
    return f"HTTP {exc.response.status_code}"


def describe_for_log(exc: BaseException) -> str:
    """A one-line operator description that never contains a token."""
    if isinstance(exc, SlackApiError):
        code = slack_error_code(exc)
        hint = _OPERATOR_HINTS.get(code)
        return f"Slack API error {code!r}" + (f" ({hint})" if hint else "")
    return type(exc).__name__


def can_still_post(exc: BaseException) -> bool:
    """False when ``exc`` says the bot cannot post where it was answering."""
    return not (isinstance(exc, SlackApiError) and slack_error_code(exc) in CANNOT_POST)
