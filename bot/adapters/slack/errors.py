"""The one place where a failure while answering on Slack becomes user text and an operator log line.

The chat service already turns worker and intake problems into localised :class:`Failed` / :class:`Notice`
replies; what reaches this mapper is what the service could not see: Slack Web API errors while
rendering, and bugs.
"""

from __future__ import annotations

import logging
from typing import Protocol

from slack_sdk.errors import SlackApiError, SlackClientError

from bot.chat.i18n import t
from bot.chat.messages import Failed, Reply


class ReplyRenderer(Protocol):
    """What shows replies on Slack (:class:`bot.adapters.slack.operations.ReplyRenderer`)."""

    async def render(self, reply: Reply) -> None: ...

log = logging.getLogger(__name__)


def slack_error_code(exc: SlackApiError) -> str:
    """Slack's error code (``not_in_channel``...), or the HTTP status when the body was not JSON."""
    data = exc.response.data
    if isinstance(data, dict) and data.get("error"):
        return str(data["error"])
    return f"HTTP {exc.response.status_code}"


def describe_for_log(exc: BaseException) -> str:
    """A one-line operator description that never contains a token."""
    if isinstance(exc, SlackApiError):
        return f"Slack API error {slack_error_code(exc)!r}"
    return type(exc).__name__


async def report_failure(renderer: ReplyRenderer, exc: Exception, *, lang: str, where: str) -> None:
    """Log ``exc`` for the operator and, when Slack still accepts messages, tell the user."""
    if isinstance(exc, SlackClientError):
        log.error("slack answer failed in %s: %s", where, describe_for_log(exc))
    else:
        log.exception("slack answer failed in %s: %s", where, describe_for_log(exc))
    try:
        await renderer.render(Failed(request_id=None, text=t("internal", lang), code="internal"))
    except SlackClientError as second:
        log.error("slack could not show the failure in %s either: %s", where, describe_for_log(second))
