"""Which conversation a message belongs to: one per thread, one per DM channel (until reset)."""

from __future__ import annotations

from bot.chat.messages import IncomingMessage
from bot.chat.store import ConversationKey

DM_THREAD = "dm"
THREAD_NAME_CHARS = 80


def conversation_key(message: IncomingMessage) -> ConversationKey:
    """(platform, workspace or "", parent channel or channel, thread or the message itself); DMs use
    (platform, "", channel, "dm"). A top-level mention opens a thread at its own message, so the
    message id stands for the thread that the adapter creates."""
    if message.is_dm:
        return ConversationKey(message.platform, "", message.channel_id, DM_THREAD)
    channel = message.parent_channel_id or message.channel_id
    return ConversationKey(message.platform, message.workspace_id or "", channel,
                           message.thread_id or message.message_id)


def opens_thread(message: IncomingMessage) -> bool:
    """A top-level message in a channel (not a DM, not in a thread) starts a new thread."""
    return not message.is_dm and message.thread_id is None


def addresses_bot(message: IncomingMessage) -> bool:
    """The bot was mentioned or replied to, or the message is a DM."""
    return message.mentioned or message.replied_to_bot or message.is_dm


def thread_name(text: str, fallback: str) -> str:
    """A thread title from the first line of the message (at most 80 characters)."""
    first_line = " ".join(text.strip().splitlines()[:1]).strip()
    if not first_line:
        return fallback
    return first_line if len(first_line) <= THREAD_NAME_CHARS else first_line[: THREAD_NAME_CHARS - 1] + "…"
