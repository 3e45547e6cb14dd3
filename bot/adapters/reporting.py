"""The catch-all of every platform adapter: a failure the chat service could not see (the platform refused
a call while answering, or a bug) becomes one operator log line and, where the platform still takes
messages, the localised "something went wrong" for the user. Each adapter calls it in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from bot.chat.i18n import t
from bot.chat.messages import Failed

log = logging.getLogger(__name__)


async def report_failure(show: Callable[[Failed], Awaitable[object]], exc: Exception, *, lang: str, where: str,
                         platform_errors: tuple[type[Exception], ...], describe: Callable[[BaseException], str],
                         tell_user: bool = True) -> None:
    """Log ``exc`` (a traceback only for what is not a platform refusal) and, with ``tell_user``, show
    the internal-error message through ``show``; a refusal of that too is logged, never raised."""
    if isinstance(exc, platform_errors):
        log.error("answering in %s failed: %s", where, describe(exc))
    else:
        log.exception("answering in %s failed: %s", where, describe(exc))
    if not tell_user:
        return
    try:
        await show(Failed(request_id=None, text=t("internal", lang), code="internal"))
    except platform_errors as second:
        log.error("could not show the failure in %s either: %s", where, describe(second))
