"""Remember recently seen Slack deliveries so that none is answered twice.

One post can arrive several times: Slack retries an event it thinks was not acknowledged (same event id,
``X-Slack-Retry-Num`` set), and a post that mentions the bot arrives both as ``app_mention`` and as
``message`` (different event ids, same channel and ``ts``).
"""

from __future__ import annotations

from collections import OrderedDict


class RecentDeliveries:
    """A bounded memory of delivery keys (event ids and ``channel:ts`` pairs)."""

    def __init__(self, *, capacity: int = 10_000) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def first_time(self, *keys: str | None) -> bool:
        """Record ``keys``; True only when none of them was seen before.

        Check-and-record happens without awaiting, so two deliveries racing on the event loop cannot
        both pass.
        """
        present = [key for key in keys if key]
        fresh = not any(key in self._seen for key in present)
        for key in present:
            self._seen[key] = None
            self._seen.move_to_end(key)
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return fresh
