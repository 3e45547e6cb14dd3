"""Allow/deny rules for Discord (guild, channel, thread parent, role, user) and Slack (team, channel, user)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bot.chat.access import AccessPolicy
from bot.chat.messages import IncomingMessage, Membership
from bot.settings import Settings


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)


DISCORD = IncomingMessage(platform="discord", workspace_id="G1", channel_id="C1", thread_id=None,
                          message_id="m1", author_id="U1", text="hi", author_roles=("R1", "R2"), mentioned=True)
DISCORD_THREAD = replace(DISCORD, channel_id="T9", thread_id="T9", parent_channel_id="C1")
DISCORD_DM = IncomingMessage(platform="discord", workspace_id=None, channel_id="D1", thread_id=None,
                             message_id="m2", author_id="U1", text="hi", is_dm=True)
SLACK = IncomingMessage(platform="slack", workspace_id="T1", channel_id="C1", thread_id=None,
                        message_id="1.1", author_id="U1", text="hi", mentioned=True)
SLACK_THREAD = replace(SLACK, thread_id="1.0")
SLACK_DM = IncomingMessage(platform="slack", workspace_id="T1", channel_id="D1", thread_id=None,
                           message_id="1.2", author_id="U1", text="hi", is_dm=True)


def allowed(message: IncomingMessage, **values: object) -> bool:
    return AccessPolicy(settings(**values)).check(message).allowed


@pytest.mark.parametrize("message", [DISCORD, DISCORD_THREAD, DISCORD_DM, SLACK, SLACK_THREAD, SLACK_DM])
def test_everything_is_allowed_by_default(message: IncomingMessage) -> None:
    assert allowed(message)


@pytest.mark.parametrize(("message", "values", "expected"), [
    # Discord guilds and Slack teams share the workspace lists
    (DISCORD, {"allowed_workspaces": ("G1",)}, True),
    (DISCORD, {"allowed_workspaces": ("G2",)}, False),
    (DISCORD, {"denied_workspaces": ("G1",)}, False),
    (SLACK, {"allowed_workspaces": ("T1",)}, True),
    (SLACK, {"allowed_workspaces": ("T2",)}, False),
    (SLACK, {"denied_workspaces": ("T1",)}, False),
    # channels; a Discord thread counts as its parent channel
    (DISCORD, {"allowed_channels": ("C1",)}, True),
    (DISCORD, {"allowed_channels": ("C2",)}, False),
    (DISCORD_THREAD, {"allowed_channels": ("C1",)}, True),
    (DISCORD_THREAD, {"denied_channels": ("C1",)}, False),
    (DISCORD_THREAD, {"denied_channels": ("T9",)}, False),
    (SLACK_THREAD, {"allowed_channels": ("C1",)}, True),
    (SLACK_THREAD, {"denied_channels": ("C1",)}, False),
    # roles (Discord only)
    (DISCORD, {"allowed_roles": ("R2",)}, True),
    (DISCORD, {"allowed_roles": ("R3",)}, False),
    (DISCORD, {"denied_roles": ("R1",)}, False),
    (SLACK, {"allowed_roles": ("R1",)}, False),  # Slack has no roles: a role list admits nobody there
    (SLACK, {"allowed_roles": ("R1",), "allowed_users": ("U1",)}, True),
    # users
    (DISCORD, {"allowed_users": ("U1",)}, True),
    (DISCORD, {"allowed_users": ("U2",)}, False),
    (DISCORD, {"allowed_users": ("U2",), "allowed_roles": ("R1",)}, True),  # listed user OR listed role
    (DISCORD, {"denied_users": ("U1",)}, False),
    (SLACK, {"allowed_users": ("U1",)}, True),
    (SLACK, {"denied_users": ("U1",)}, False),
    # deny beats allow
    (DISCORD, {"allowed_users": ("U1",), "denied_channels": ("C1",)}, False),
    (SLACK, {"allowed_channels": ("C1",), "denied_users": ("U1",)}, False),
])
def test_lists(message: IncomingMessage, values: dict, expected: bool) -> None:
    assert allowed(message, **values) is expected


def test_dms_can_be_switched_off_per_platform() -> None:
    assert not allowed(DISCORD_DM, discord_allow_dms=False)
    assert allowed(SLACK_DM, discord_allow_dms=False)
    assert not allowed(SLACK_DM, slack_allow_dms=False)
    assert allowed(DISCORD_DM, slack_allow_dms=False)


def test_channel_allow_lists_do_not_apply_to_dms_but_user_lists_do() -> None:
    assert allowed(DISCORD_DM, allowed_channels=("C1",))
    assert allowed(SLACK_DM, allowed_channels=("C1",))
    assert not allowed(DISCORD_DM, allowed_users=("U2",))
    assert not allowed(SLACK_DM, denied_users=("U1",))


def in_guilds(*memberships: Membership) -> IncomingMessage:
    """A Discord DM whose author's memberships were looked up."""
    return replace(DISCORD_DM, memberships=memberships)


@pytest.mark.parametrize(("message", "values", "expected"), [
    # a Discord DM is judged through the author's memberships in the guilds the bot shares with them
    (in_guilds(Membership("G1")), {"allowed_workspaces": ("G1",)}, True),
    (in_guilds(Membership("G2")), {"allowed_workspaces": ("G1",)}, False),
    (in_guilds(), {"allowed_workspaces": ("G1",)}, False),  # in no shared guild
    (in_guilds(), {"denied_roles": ("R9",)}, False),
    (in_guilds(Membership("G1")), {"denied_workspaces": ("G1",)}, False),
    (in_guilds(Membership("G2"), Membership("G1")), {"denied_workspaces": ("G1",)}, False),  # deny wins
    (in_guilds(Membership("G2")), {"denied_workspaces": ("G1",)}, True),
    (in_guilds(Membership("G1", ("R1",))), {"denied_roles": ("R1",)}, False),
    (in_guilds(Membership("G1", ("R2",))), {"denied_roles": ("R1",)}, True),
    (in_guilds(Membership("G1", ("R2",))), {"allowed_roles": ("R2",)}, True),
    (in_guilds(Membership("G1")), {"allowed_roles": ("R2",)}, False),
    (in_guilds(Membership("G1")), {"allowed_roles": ("R2",), "allowed_users": ("U1",)}, True),
    # a role held in a guild that is not allowed does not count
    (in_guilds(Membership("G2", ("R2",))), {"allowed_workspaces": ("G1",), "allowed_roles": ("R2",)}, False),
    (in_guilds(Membership("G2", ("R2",)), Membership("G1")),
     {"allowed_workspaces": ("G1",), "allowed_roles": ("R2",)}, False),
    # a Slack DM belongs to its team
    (SLACK_DM, {"allowed_workspaces": ("T1",)}, True),
    (SLACK_DM, {"allowed_workspaces": ("T2",)}, False),
    (SLACK_DM, {"denied_workspaces": ("T1",)}, False),
])
def test_dms_do_not_bypass_workspace_and_role_rules(message: IncomingMessage, values: dict,
                                                    expected: bool) -> None:
    assert allowed(message, **values) is expected


def test_memberships_are_looked_up_only_for_discord_dms_under_workspace_or_role_rules() -> None:
    rules = AccessPolicy(settings(denied_roles=("R1",), admin_users=("BOSS",)))
    assert rules.needs_memberships(DISCORD_DM)
    assert not rules.needs_memberships(replace(DISCORD_DM, author_id="BOSS"))
    assert not any(rules.needs_memberships(m) for m in (DISCORD, DISCORD_THREAD, SLACK, SLACK_DM))
    assert not AccessPolicy(settings(allowed_users=("U1",), allowed_channels=("C1",))).needs_memberships(DISCORD_DM)


def test_admins_pass_every_list() -> None:
    everything_denied = {"denied_users": ("U1",), "denied_channels": ("C1",), "allowed_workspaces": ("X",),
                         "discord_allow_dms": False, "admin_users": ("U1",)}
    for message in (DISCORD, DISCORD_THREAD, DISCORD_DM, SLACK, SLACK_DM):
        assert allowed(message, **everything_denied)


def test_ids_are_read_from_comma_separated_environment_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_CHANNELS", "C9, C1 ,")
    monkeypatch.setenv("DENIED_ROLES", "R2")
    policy = AccessPolicy(Settings(_env_file=None))
    assert policy.check(SLACK).allowed
    assert not policy.check(DISCORD).allowed  # R2 is denied
    assert not policy.check(replace(SLACK, channel_id="C5")).allowed
