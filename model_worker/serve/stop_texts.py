"""Ending an answer where a client's stop text appears, on streamed text.

Text that may be the beginning of a stop text is held back until the next piece shows whether it is,
so no part of a stop text is ever sent, even when it arrives split over several pieces.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopTextCutter:
    """Feed streamed pieces in order; each call returns what can be sent now. After a stop text is
    found, :attr:`hit` is true and everything from it on is dropped."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [stop for stop in stops if stop]
        self._held = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        """The text that can be sent now: up to a stop text, less a tail that may begin one."""
        if self.hit:
            return ""
        text = self._held + piece
        found = [at for at in (text.find(stop) for stop in self._stops) if at >= 0]
        if found:
            self.hit = True
            self._held = ""
            return text[:min(found)]
        keep = self._longest_stop_beginning(text)
        self._held = text[len(text) - keep:]
        return text[:len(text) - keep]

    def flush(self) -> str:
        """What is held back, at the end of the answer (it did not turn into a stop text)."""
        held, self._held = self._held, ""
        return "" if self.hit else held

    def _longest_stop_beginning(self, text: str) -> int:
        """Length of the longest end of ``text`` that a stop text begins with."""
        longest = max((len(stop) - 1 for stop in self._stops), default=0)
        for size in range(min(longest, len(text)), 0, -1):
            tail = text[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0
