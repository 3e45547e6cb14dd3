"""Who may use the bot, and where: allow/deny lists, DMs on/off per platform, administrators.

Rules, in order (the first that decides wins):

1. Administrators (``ADMIN_USERS``) are always allowed; the console (a local operator) too.
2. DMs: refused when DMs are off for the platform (``DISCORD_ALLOW_DMS`` / ``SLACK_ALLOW_DMS``).
3. Deny lists: the user, any of the user's roles, the workspace (Discord guild / Slack team), or the
   channel -- where a thread's parent channel counts as well as the thread itself.
4. Allow lists, each only when non-empty. *Where*: the workspace and the channel (or the thread's parent)
   must be listed. *Who*: when ``ALLOWED_USERS`` or ``ALLOWED_ROLES`` is set, the user must be listed or
   hold a listed role (Slack carries no roles, so there only ``ALLOWED_USERS`` can admit).

DMs never bypass the workspace and role rules. A Slack DM belongs to its team, which is its workspace. A
Discord DM belongs to no guild: when any workspace or role rule is set, the rules apply through the
author's memberships in the guilds the bot shares with them (looked up by the adapter, see
:meth:`AccessPolicy.needs_memberships`): a membership in a denied guild or a denied role refuses, and the
author must be a member of at least one allowed guild (any shared guild when no allow list is set),
where an allowed role counts. Channel lists do not apply to DMs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.chat.messages import IncomingMessage, Membership
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

    def needs_memberships(self, message: IncomingMessage) -> bool:
        """Whether ``message`` (a DM outside any workspace) can only be judged with the author's
        memberships, which the caller then looks up and puts into ``message.memberships``."""
        return (message.is_dm and message.workspace_id is None and message.platform != "console"
                and not self.is_admin(message.author_id) and self._workspace_or_role_rules())

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

    def _workspace_or_role_rules(self) -> bool:
        s = self._settings
        return bool(s.allowed_workspaces or s.denied_workspaces or s.allowed_roles or s.denied_roles)

    def _dm_rule(self, message: IncomingMessage) -> str | None:
        if not message.is_dm:
            return None
        enabled = {"discord": self._settings.discord_allow_dms, "slack": self._settings.slack_allow_dms}
        return None if enabled.get(message.platform, True) else "DMs are disabled"

    def _deny_rule(self, message: IncomingMessage) -> str | None:
        s = self._settings
        if message.author_id in s.denied_users:
            return "user denied"
        standing = _memberships(message)
        if any(set(membership.roles) & set(s.denied_roles) for membership in standing):
            return "role denied"
        if any(membership.workspace_id in s.denied_workspaces for membership in standing):
            return "workspace denied"
        if set(_channels(message)) & set(s.denied_channels):
            return "channel denied"
        return None

    def _where_rule(self, message: IncomingMessage) -> str | None:
        s = self._settings
        if message.is_dm and not self._workspace_or_role_rules():
            return None
        if message.is_dm and not _memberships(message):
            return "DM from someone in no workspace the bot shares"
        if s.allowed_workspaces and not self._admitted(message):
            return "workspace not in allow list"
        if not message.is_dm and s.allowed_channels and not set(_channels(message)) & set(s.allowed_channels):
            return "channel not in allow list"
        return None

    def _who_rule(self, message: IncomingMessage) -> str | None:
        s = self._settings
        if not (s.allowed_users or s.allowed_roles):
            return None
        if message.author_id in s.allowed_users:
            return None
        if any(set(membership.roles) & set(s.allowed_roles) for membership in self._admitted(message)):
            return None
        return "user not in allow list"

    def _admitted(self, message: IncomingMessage) -> list[Membership]:
        """The author's memberships in allowed workspaces (all of them when no allow list is set)."""
        allowed = self._settings.allowed_workspaces
        return [m for m in _memberships(message) if not allowed or m.workspace_id in allowed]


def _memberships(message: IncomingMessage) -> tuple[Membership, ...]:
    """Where the author stands: the message's own workspace and roles, or, for a DM outside any
    workspace, the memberships the adapter looked up."""
    if message.workspace_id is None:
        return message.memberships
    return (Membership(message.workspace_id, message.author_roles),)


def _channels(message: IncomingMessage) -> tuple[str, ...]:
    """The channel and, for a thread, its parent: both count for channel rules."""
    ids = [message.channel_id]
    if message.parent_channel_id:
        ids.append(message.parent_channel_id)
    return tuple(ids)
