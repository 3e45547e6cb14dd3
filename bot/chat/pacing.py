"""Pacing of streamed edits: the first is due at once, later ones at most every ``interval_s``."""

from __future__ import annotations

import time
from collections.abc import Callable


class EditPacer:
    """Says when the next streamed edit may be sent (platforms rate-limit edits per message)."""

    def __init__(self, interval_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._last: float | None = None

    def due(self) -> bool:
        """``True`` (and the edit counted as sent) when an edit may go out now."""
        now = self._clock()
        if self._last is not None and now - self._last < self._interval_s:
            return False
        self._last = now
        return True

    def reset(self) -> None:
        """Start over: the next edit is due at once (the answer restarted)."""
        self._last = None
