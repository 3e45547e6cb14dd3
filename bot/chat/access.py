"""Who may use the bot, and where: allow/deny lists, DMs on/off per platform, administrators.

Rules, in order (the first that decides wins):

1. Administrators (``ADMIN_USERS``) are always allowed; the console (a local operator) too.
2. DMs: refused when DMs are off for the platform (``DISCORD_ALLOW_DMS`` / ``SLACK_ALLOW_DMS``).
3. Deny lists: the user, any of the user's roles, the workspace (Discord guild / Slack team), or the
   channel -- where a thread's parent channel counts as well as the thread itself.
4. Allow lists, each only when non-empty. *Where*: the workspace and the channel (or the thread's parent)
   must be listed; DMs have no workspace or channel, so only rule 2 governs where they may happen.
   *Who*: when ``ALLOWED_USERS`` or ``ALLOWED_ROLES`` is set, the user must be listed or hold a listed
   role (Slack and DMs carry no roles, so there only ``ALLOWED_USERS`` can admit).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.chat.messages import IncomingMessage
from bot.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AccessDecision:
    allowed: bool
    reason: str  # for the operator log only


class AccessPolicy:
    """Applies the settings' access rules to one incoming message (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def is_admin(self, user_id: str) -> bool:
        return user_id in self._settings.admin_users

    def check(self, message: IncomingMessage) -> AccessDecision:
        """Decide whether the bot may answer ``message``."""
        if message.platform == "console":
            return AccessDecision(True, "console")
        if self.is_admin(message.author_id):
            return AccessDecision(True, "admin")
        for rule in (self._dm_rule, self._deny_rule, self._where_rule, self._who_rule):
            refusal = rule(message)
            if refusal is not None:
                return AccessDecision(False, refusal)
        return AccessDecision(True, "allowed")

    def _dm_rule(self, message: IncomingMessage) -> str | None:
        if not message.is_dm:
            return None
        enabled = {"discord": self._settings.discord_allow_dms, "slack": self._settings.slack_allow_dms}
        return None if enabled.get(message.platform, True) else "DMs are disabled"

    def _deny_rule(self, message: IncomingMessage) -> str | None:
        s = self._settings
        if message.author_id in s.denied_users:
            return "user denied"
        if set(message.author_roles) & set(s.denied_roles):
            return "role denied"
        if message.workspace_id is not None and message.workspace_id in s.denied_workspaces:
            return "workspace denied"
        if set(_channels(message)) & set(s.denied_channels):
            return "channel denied"
        return None

    def _where_rule(self, message: IncomingMessage) -> str | None:
        s = self._settings
        if message.is_dm:
            return None
        if s.allowed_workspaces and message.workspace_id not in s.allowed_workspaces:
            return "workspace not in allow list"
        if s.allowed_channels and not set(_channels(message)) & set(s.allowed_channels):
            return "channel not in allow list"
        return None

    def _who_rule(self, message: IncomingMessage) -> str | None:
        s = self._settings
        if not (s.allowed_users or s.allowed_roles):
            return None
        if message.author_id in s.allowed_users or set(message.author_roles) & set(s.allowed_roles):
            return None
        return "user not in allow list"


def _channels(message: IncomingMessage) -> tuple[str, ...]:
    """The channel and, for a thread, its parent: both count for channel rules."""
    ids = [message.channel_id]
    if message.parent_channel_id:
        ids.append(message.parent_channel_id)
    return tuple(ids)
