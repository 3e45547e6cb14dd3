"""Remember recently seen deliveries so that no message is answered twice.

Platforms deliver one message more than once: Slack retries an event it thinks was not acknowledged and
sends a post that mentions the bot both as ``app_mention`` and as ``message``; Discord replays events after
a gateway reconnect. The chat service records each message it is handed here, by platform, channel and
message id, before it does anything else with it (the store's per-conversation check covers restarts).
"""

from __future__ import annotations

from collections import OrderedDict


class RecentDeliveries:
    """A bounded memory of delivery keys, oldest forgotten first."""

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
