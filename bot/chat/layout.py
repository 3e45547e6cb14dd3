"""The one answer layout, for every platform: which messages an answer has and what each one shows.

Adapters only apply it (post, edit, pace; see :mod:`bot.chat.rendering`); they decide nothing here.

- An answer is a sequence of messages, each within the platform's limit, in reading order.
- Waiting: one message with the queue position or "Thinking…", carrying the Stop button.
- Streaming: the text so far, split into messages; the Stop button sits on the last one (the message that
  grows, where people are reading), and leaves the earlier ones.
- Done: the text's messages, without a button.
- Stopped or failed: the text streamed so far is kept, followed by a short notice (in the last message
  when it fits, otherwise in one more); no button. A failure before any text replaces the placeholder.
- Messages are never taken back: when an answer restarts shorter, the surplus ones show a marker.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.chat.messages import Failed, Final, Placeholder, Streaming
from bot.chat.splitting import Markup, prepare_parts

SURPLUS_MARKER = "…"

AnswerReply = Placeholder | Streaming | Final | Failed


@dataclass(frozen=True)
class AnswerMessage:
    """One message of an answer as it should look now: its text and whether it carries Stop."""

    text: str
    stop: bool = False


def answer_messages(reply: AnswerReply) -> tuple[AnswerMessage, ...]:
    """The messages ``reply`` wants on screen (texts are already shaped for the platform)."""
    match reply:
        case Placeholder(text=text):
            return (AnswerMessage(text, stop=True),)
        case Streaming(parts=parts):
            last = len(parts) - 1
            return tuple(AnswerMessage(part, stop=index == last) for index, part in enumerate(parts))
        case Final(parts=parts):
            return tuple(AnswerMessage(part) for part in parts)
        case Failed(parts=parts, text=text):
            return tuple(AnswerMessage(part) for part in parts or (text,))
    raise TypeError(f"not an answer reply: {reply!r}")


def surplus_message() -> AnswerMessage:
    """What a message beyond the current layout shows (an answer that restarted with less text)."""
    return AnswerMessage(SURPLUS_MARKER)


def ending_parts(kept: str, notice: str, *, limit: int, markup: Markup) -> tuple[str, ...]:
    """The messages of an answer that ended early: the text so far, then ``notice`` after a blank line."""
    return prepare_parts(f"{kept.rstrip()}\n\n{notice}".strip(), limit=limit, markup=markup)
