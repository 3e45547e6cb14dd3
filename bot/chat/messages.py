"""What adapters hand to the chat service, and what the service hands back for them to render.

Nothing here knows Discord or Slack: adapters translate platform events into :class:`IncomingMessage`
and render :class:`Reply` events onto their platform (post, edit, split, typing, reactions).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

Platform = Literal["discord", "slack", "console"]


@dataclass(frozen=True)
class AttachmentRef:
    """An attachment as the platform describes it; bytes are fetched only once its metadata passes."""

    filename: str
    declared_type: str | None  # MIME type the platform reports (may be wrong or missing)
    declared_size: int | None  # bytes, as the platform reports
    fetch: Callable[[], Awaitable[bytes]]  # downloads the bytes (raises an AttachmentError)
    width: int | None = None
    height: int | None = None


class AttachmentError(Exception):
    """An attachment could not be used as sent; the subclass says why (each becomes its own notice)."""


class AttachmentAccessError(AttachmentError):
    """The platform would not give us the file (for example Slack's HTML login page)."""


class AttachmentTooLarge(AttachmentError):
    """The download passed the size cap (it was stopped there, not read to the end)."""


class AttachmentFetchError(AttachmentError):
    """The download failed on the way: a network error, or it took longer than its time limit."""


@dataclass(frozen=True)
class PlatformProfile:
    """How an adapter's platform behaves; the service shapes replies to fit."""

    platform: Platform
    max_message_chars: int  # one message's limit for streamed and final parts
    edit_interval_s: float  # pace of streamed edits per message
    markup: Literal["discord", "slack", "plain"] = "plain"


@dataclass(frozen=True)
class Membership:
    """The author's standing in one workspace (Discord guild or Slack team): its id and the roles held."""

    workspace_id: str
    roles: tuple[str, ...] = ()


MembershipLookup = Callable[[], Awaitable[tuple[Membership, ...]]]


@dataclass(frozen=True)
class IncomingMessage:
    platform: Platform
    workspace_id: str | None  # Discord guild / Slack team; None in DMs on Discord and the console
    channel_id: str  # where the message was posted (for a Discord thread: the thread's id)
    thread_id: str | None  # the thread the message is in; None for a top-level message
    message_id: str  # platform message id (Discord snowflake, Slack ts)
    author_id: str
    text: str  # bot mention already removed
    parent_channel_id: str | None = None  # a thread's parent channel (for access rules)
    author_name: str = ""
    author_roles: tuple[str, ...] = ()
    attachments: tuple[AttachmentRef, ...] = ()
    mentioned: bool = False
    replied_to_bot: bool = False
    is_dm: bool = False
    locale: str | None = None  # platform locale such as "ja", "en-US"
    # A DM outside any workspace (Discord): the author's memberships in the workspaces the bot shares with
    # them, looked up only when a workspace or role rule needs them (see bot.chat.access).
    find_memberships: MembershipLookup | None = None
    memberships: tuple[Membership, ...] = ()


# ---- replies the service produces ----------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    pass


@dataclass(frozen=True)
class OpenThread(Reply):
    """Start a thread from the incoming message and answer there (only where the platform needs it)."""

    name: str


@dataclass(frozen=True)
class Notice(Reply):
    """A short localised message: help, reset done, an attachment skipped, rate limited, not allowed."""

    text: str
    kind: Literal["help", "reset", "attachment", "limited", "not_allowed", "info"] = "info"


@dataclass(frozen=True)
class Placeholder(Reply):
    """The request is waiting; ``text`` is the localised queue position ("Queued: #3")."""

    request_id: str
    text: str
    position: int | None = None


@dataclass(frozen=True)
class Streaming(Reply):
    """The reply so far, already split into platform-sized parts; render by editing/adding messages."""

    request_id: str
    parts: tuple[str, ...]


@dataclass(frozen=True)
class Final(Reply):
    request_id: str
    parts: tuple[str, ...]
    cancelled: bool = False


@dataclass(frozen=True)
class Failed(Reply):
    """A localised failure. With a ``request_id`` it ends that answer: ``parts`` are the answer's messages
    from now on (the text streamed so far, then ``text`` as a short notice). Without one it is a message of
    its own. The user's turn is kept either way."""

    request_id: str | None
    text: str
    code: str = "internal"
    parts: tuple[str, ...] = ()


ReplyKind = OpenThread | Notice | Placeholder | Streaming | Final | Failed


@dataclass
class ReplyStream:
    """Convenience container for tests and adapters collecting what the service produced."""

    replies: list[Reply] = field(default_factory=list)
