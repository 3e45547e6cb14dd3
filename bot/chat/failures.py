"""Every failure the user can meet, mapped to a localised message in this one place.

Worker errors, rate limits, access refusals and skipped attachments all become catalogue strings here;
exception text never reaches a chat (the operator log gets it instead, where the error is caught).
"""

from __future__ import annotations

import math

from bot.chat.i18n import t
from bot.chat.images import ACCEPTED_TYPES, Rejected
from bot.chat.limits import Limited
from bot.worker_client.base import (
    BadImage,
    ContextTooLong,
    UnknownImage,
    WorkerBusy,
    WorkerError,
    WorkerLoading,
    WorkerShuttingDown,
    WorkerTimeout,
    WorkerUnavailable,
)

_WORKER_KEYS: tuple[tuple[type[WorkerError], str], ...] = (
    (WorkerLoading, "worker_loading"),
    (WorkerShuttingDown, "worker_restarting"),
    (WorkerUnavailable, "worker_unavailable"),
    (WorkerBusy, "busy"),
    (WorkerTimeout, "timeout"),
    (ContextTooLong, "context_too_long"),
    (BadImage, "bad_image"),
    (UnknownImage, "bad_image"),
)


def failure_text(error: BaseException, lang: str) -> tuple[str, str]:
    """(code, localised message) for an error raised while answering; unknown errors say "internal"."""
    for cls, key in _WORKER_KEYS:
        if isinstance(error, cls):
            seconds = math.ceil(error.retry_after) if error.retry_after else 10
            return str(error.code), t(key, lang, seconds=max(1, seconds))
    return "internal", t("internal", lang)


def limited_text(limited: Limited, lang: str) -> str:
    if limited.reason == "in_flight":
        return t("too_many_in_flight", lang)
    return t("rate_limited", lang, seconds=limited.retry_after_whole_s)


def not_allowed_text(lang: str) -> str:
    return t("not_allowed", lang)


def rejected_image_text(rejected: Rejected, lang: str, *, max_bytes: int, max_pixels: int) -> str:
    key = {
        "unsupported": "image_unsupported",
        "too_large": "image_too_large",
        "too_many_pixels": "image_too_many_pixels",
        "corrupt": "image_corrupt",
        "no_access": "attachment_no_access",
        "fetch_failed": "attachment_fetch_failed",
    }[rejected.reason]
    return t(key, lang, name=rejected.filename or "?", accepted=ACCEPTED_TYPES,
             limit_mb=_megabytes(max_bytes), limit_mp=round(max_pixels / 1_000_000))


def _megabytes(size: int) -> str:
    value = size / 1_000_000
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"
