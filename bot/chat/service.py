"""The platform-neutral chat service: everything the bot does for one incoming message.

Adapters call :meth:`ChatService.handle` and render the :class:`~bot.chat.messages.Reply` events it
yields. Every event that carries a ``request_id`` describes the whole current state of that request's
answer: the first one posts a message, later ones edit it (``Streaming``/``Final`` parts beyond the
first become further messages). The flow is a sequence of named steps:

1. route: a message delivered again is dropped at once; is it for the bot (mention, reply to the bot, DM,
   or a thread it already talks in)?
2. admit: access rules, then commands (``reset``/``help``), then the user's rate and in-flight limits, then
   the bot-wide bound on answers in progress (:mod:`bot.chat.admission`), all before any download;
3. intake images (metadata check, fetch, normalise), with a notice for each skipped attachment;
4. store the user turn, *then* send the worker the newest turns that can fit the model's context, with
   their images as data (:mod:`bot.chat.context`);
5. stream: placeholder with queue position, first token at once, then edits paced to the platform, all
   within one deadline (``WORKER_REQUEST_TIMEOUT_S``), past which the user is told and the worker stops;
6. on completion store the assistant turn; a failed or cancelled answer leaves the user turn in place.

What the answer's messages look like at each step is decided in :mod:`bot.chat.layout`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Literal

from bot.chat.access import AccessPolicy
from bot.chat.admission import AnswerSlots
from bot.chat.commands import Command, parse_command
from bot.chat.context import ContextBudget, conversation_tail, request_turns
from bot.chat.conversations import addresses_bot, conversation_key, opens_thread, thread_name
from bot.chat.dedup import RecentDeliveries
from bot.chat.failures import failure_text, limited_text, not_allowed_text, rejected_image_text
from bot.chat.i18n import language_for_locale, t
from bot.chat.images import ACCEPTED_TYPES, ImageLimits, NormalisedImage, Rejected, intake_attachments
from bot.chat.layout import ending_parts
from bot.chat.limits import UserLimits
from bot.chat.messages import (
    Failed,
    Final,
    IncomingMessage,
    Membership,
    Notice,
    OpenThread,
    Placeholder,
    PlatformProfile,
    Reply,
    Streaming,
)
from bot.chat.pacing import EditPacer
from bot.chat.splitting import neutralise_mentions, prepare_parts
from bot.chat.store import ConversationKey, DuplicateMessage, Store
from bot.settings import Settings
from bot.worker_client.base import WorkerClient, WorkerError, WorkerTimeout
from model_worker.wire.protocol import (
    BUSY_RETRY_AFTER_S,
    DEFAULT_MAX_BODY_BYTES,
    MAX_TURN_CHARS,
    MAX_TURNS,
    ChatRequest,
    DoneEvent,
    FinishReason,
    GenerationParams,
    QueuedEvent,
    RestartedEvent,
    StartedEvent,
    TokenEvent,
    Usage,
)

log = logging.getLogger(__name__)

#: Raw image bytes per request: base64 adds a third, and room is left for the text, so a request stays
#: under the worker's default body limit.
MAX_REQUEST_IMAGE_BYTES = DEFAULT_MAX_BODY_BYTES * 3 // 5
#: Messages whose images are downloaded and decoded at the same time (the CPU-bound decode gains nothing
#: from more, and each photo may take up to MAX_IMAGE_BYTES plus its decoded pixels in memory).
MAX_CONCURRENT_INTAKES = 4
#: A Discord DM's membership lookup (a few REST calls) may take this long before the DM is refused.
MEMBERSHIP_LOOKUP_TIMEOUT_S = 10.0


@dataclass
class _InFlight:
    author_id: str
    stop_requested: bool = False


@dataclass
class _Outcome:
    """What came of one worker request (filled in while streaming)."""

    text: str = ""
    done: DoneEvent | None = None
    error: Exception | None = None
    placeholder: str = ""


@dataclass
class _Ask:
    """One admitted user message on its way to the worker."""

    message: IncomingMessage
    key: ConversationKey
    lang: str
    profile: PlatformProfile
    user_key: str
    images: list[NormalisedImage] = field(default_factory=list)


class ChatService:
    """Turns incoming messages into reply events; shared by every adapter (see the module docstring)."""

    def __init__(self, *, settings: Settings, store: Store, worker: WorkerClient,
                 max_request_image_bytes: int = MAX_REQUEST_IMAGE_BYTES) -> None:
        self._settings = settings
        self._max_request_image_bytes = max_request_image_bytes
        self._store = store
        self._worker = worker
        self._access = AccessPolicy(settings)
        self._limits = UserLimits(per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst,
                                  max_in_flight=settings.max_in_flight_per_user)
        self._image_limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels,
                                         settings.max_image_side)
        self._slots = AnswerSlots(worker)
        self._intake_gate = asyncio.Semaphore(MAX_CONCURRENT_INTAKES)
        self._in_flight: dict[str, _InFlight] = {}
        self._deliveries = RecentDeliveries()
        self._cleanups: set[asyncio.Task] = set()  # cancellations of abandoned requests still running
        store.configure_retention(max_age_days=settings.image_retention_days,
                                  max_total_bytes=settings.image_retention_bytes,
                                  text_max_age_days=settings.conversation_retention_days)

    def language_for(self, locale: str | None) -> Literal["en", "ja"]:
        """The reply language for a platform locale (``ja*`` -> ja, others -> en, none -> the default)."""
        return "ja" if language_for_locale(locale, self._settings.default_language) == "ja" else "en"

    # ---- entry points ----

    async def handle(self, message: IncomingMessage, profile: PlatformProfile) -> AsyncIterator[Reply]:
        """Everything the bot does for one incoming message (nothing when it is not for the bot)."""
        async with aclosing(self._guarded(self._handle(message, profile), message)) as replies:
            async for reply in replies:
                yield reply

    async def run_command(self, command: Literal["reset", "help"], message: IncomingMessage,
                          profile: PlatformProfile) -> AsyncIterator[Reply]:
        """A slash command: always answered (with the not-allowed notice where the bot may not answer)."""
        async with aclosing(self._guarded(self._run_command(command, message), message)) as replies:
            async for reply in replies:
                yield reply

    async def _guarded(self, replies: AsyncIterator[Reply], message: IncomingMessage) -> AsyncIterator[Reply]:
        """Anything unexpected (the store, a bug) still ends with a localised message; the log has the detail."""
        async with aclosing(replies):
            try:
                async for reply in replies:
                    yield reply
            except Exception:
                log.exception("handling %s message %s failed", message.platform, message.message_id)
                yield Failed(None, t("internal", self.language_for(message.locale)), "internal")

    async def _handle(self, message: IncomingMessage, profile: PlatformProfile) -> AsyncIterator[Reply]:
        if not self._deliveries.first_time(f"{message.platform}:{message.channel_id}:{message.message_id}"):
            log.info("ignoring %s message %s delivered again", message.platform, message.message_id)
            return
        lang = self.language_for(message.locale)
        key = conversation_key(message)
        if not await self._is_for_bot(message, key):
            return
        if not await self._allowed(message):
            if self._settings.notify_not_allowed:
                yield Notice(not_allowed_text(lang), kind="not_allowed")
            return
        command = parse_command(message.text)
        if command is not None and not message.attachments:
            yield await self._command(command, message, lang)
            return
        if await self._store.has_user_message(key, message.message_id):
            log.info("ignoring redelivered message %s", message.message_id)
            return
        if not message.text.strip() and not message.attachments:
            yield Notice(t("empty_message", lang))
            return
        if opens_thread(message):
            yield OpenThread(thread_name(message.text, t("thread_name_default", lang)))
        ask = _Ask(message, key, lang, profile, f"{message.platform}:{message.author_id}")
        async with aclosing(self._answer_within_limits(ask)) as replies:
            async for reply in replies:
                yield reply

    async def _run_command(self, command: Command, message: IncomingMessage) -> AsyncIterator[Reply]:
        lang = self.language_for(message.locale)
        if not await self._allowed(message):
            yield Notice(not_allowed_text(lang), kind="not_allowed")
            return
        yield await self._command(command, message, lang)

    async def cancel(self, request_id: str, *, user_id: str) -> bool:
        """Stop a running answer; only its requester or an administrator may. ``True`` when asked."""
        running = self._in_flight.get(request_id)
        if running is None:
            return False
        if user_id != running.author_id and not self._access.is_admin(user_id):
            log.info("user %s may not stop request %s", user_id, request_id)
            return False
        log.info("request %s stopped by user %s", request_id, user_id)
        running.stop_requested = True
        await self._worker.cancel(request_id)
        return True

    # ---- step 1-2: route and admit ----

    async def _is_for_bot(self, message: IncomingMessage, key: ConversationKey) -> bool:
        if addresses_bot(message):
            return True
        return message.thread_id is not None and await self._store.find_conversation(key) is not None

    async def _allowed(self, message: IncomingMessage) -> bool:
        if self._access.needs_memberships(message):
            message = replace(message, memberships=await self._memberships(message))
        decision = self._access.check(message)
        if not decision.allowed:
            log.info("not answering %s user %s in %s: %s", message.platform, message.author_id,
                     message.channel_id, decision.reason)
        return decision.allowed

    async def _memberships(self, message: IncomingMessage) -> tuple[Membership, ...]:
        """The author's memberships for a DM's access check; none (so: refused) when the lookup fails."""
        try:
            async with asyncio.timeout(MEMBERSHIP_LOOKUP_TIMEOUT_S):
                return await message.find_memberships()
        except Exception as exc:  # the platform refused or timed out: the rules cannot be applied
            log.warning("could not look up the memberships of %s user %s: %r", message.platform,
                        message.author_id, exc)
            return ()

    async def _command(self, command: Command, message: IncomingMessage, lang: str) -> Notice:
        if command == "reset":
            # A top-level message (or a Slack slash command, which never says its thread) names no
            # conversation: say where a reset works instead of pretending. A thread or DM keeps talking to
            # the bot after a reset.
            if opens_thread(message):
                return Notice(t("reset_where", lang), kind="reset")
            key = conversation_key(message)
            await self._store.reset_conversation(key)
            log.info("reset %s", key)
            return Notice(t("reset_done", lang), kind="reset")
        return Notice(t("help", lang, max_images=self._settings.max_images_per_message, accepted=ACCEPTED_TYPES,
                       max_mb=round(self._settings.max_image_bytes / 1_000_000)), kind="help")

    async def _answer_within_limits(self, ask: _Ask) -> AsyncIterator[Reply]:
        """Answer unless the user's own limits or the bot-wide bound say no (both before any download)."""
        refusal = self._admit(ask)
        if refusal is not None:
            yield refusal
            return
        try:
            async with aclosing(self._answer(ask)) as replies:
                async for reply in replies:
                    yield reply
        finally:
            self._release(ask)

    def _admit(self, ask: _Ask) -> Notice | None:
        """Take the user's place and a bot-wide slot for this answer, or say why not."""
        limited = None if self._exempt(ask) else self._limits.try_acquire(ask.user_key)
        if limited is not None:
            log.info("user %s limited (%s)", ask.user_key, limited.reason)
            return Notice(limited_text(limited, ask.lang), kind="limited")
        if not self._slots.try_take():
            log.info("%d answers in progress, the most the worker takes: %s told busy", self._slots.limit,
                     ask.user_key)
            self._release_user_place(ask)
            return Notice(t("busy", ask.lang, seconds=round(BUSY_RETRY_AFTER_S)), kind="limited")
        return None

    def _release(self, ask: _Ask) -> None:
        self._slots.give_back()
        self._release_user_place(ask)

    def _release_user_place(self, ask: _Ask) -> None:
        if not self._exempt(ask):
            self._limits.release(ask.user_key)

    def _exempt(self, ask: _Ask) -> bool:
        """The console and administrators have no per-user limits (the bot-wide bound still holds)."""
        return ask.message.platform == "console" or self._access.is_admin(ask.message.author_id)

    # ---- step 3-4: images, user turn, request ----

    async def _answer(self, ask: _Ask) -> AsyncIterator[Reply]:
        for notice in await self._intake_images(ask):
            yield notice
        if not ask.message.text.strip() and not ask.images:
            return  # every attachment was skipped and there is no text: the notices said why
        stored = await self._store_user_turn(ask)
        ask.images = []  # stored: the request takes them from the store, so the pixels need not stay here
        if stored is None:
            return
        conversation_id, turn_id = stored
        request = await self._build_request(conversation_id, ask.user_key)
        async with aclosing(self._run_request(request, ask, conversation_id, turn_id)) as replies:
            async for reply in replies:
                yield reply

    async def _intake_images(self, ask: _Ask) -> list[Notice]:
        """Accepted images go into ``ask.images`` (in order); each skipped one gets a notice."""
        refs = ask.message.attachments
        limit = self._settings.max_images_per_message
        notices = [Notice(t("image_too_many", ask.lang, limit=limit), kind="attachment")] if len(refs) > limit else []
        async with self._intake_gate:  # downloads and decodes at once: bounded, as each may take 100+ MB
            results = await intake_attachments(refs[:limit], self._image_limits)
        for result in results:
            if isinstance(result, Rejected):
                notices.append(Notice(rejected_image_text(result, ask.lang, max_bytes=self._image_limits.max_bytes,
                                                          max_pixels=self._image_limits.max_pixels), kind="attachment"))
            else:
                ask.images.append(result)
        return notices

    async def _store_user_turn(self, ask: _Ask) -> tuple[int, int] | None:
        """Store the images and the user's turn before anything goes to the worker."""
        conversation = await self._store.open_conversation(ask.key)
        for image in ask.images:
            await self._store.put_image(image.sha256, image.png, width=image.width, height=image.height)
        try:
            turn_id = await self._store.add_turn(
                conversation.id, role="user", text=ask.message.text, status="pending",
                image_hashes=[image.sha256 for image in ask.images], author_id=ask.message.author_id,
                platform_message_id=ask.message.message_id)
        except DuplicateMessage:
            log.info("ignoring redelivered message %s", ask.message.message_id)
            return None
        return conversation.id, turn_id

    async def _build_request(self, conversation_id: int, user_key: str) -> ChatRequest:
        """The newest turns of the conversation that can fit the context, with their images as data."""
        budget = ContextBudget.for_answer(max_new_tokens=self._settings.max_new_tokens,
                                          image_bytes=self._max_request_image_bytes)
        turns = await self._store.recent_turns(conversation_id, limit=MAX_TURNS, max_text_chars=MAX_TURN_CHARS)
        tail = conversation_tail(turns, budget)
        hashes = [sha for turn in tail for sha in turn.image_hashes]
        images = await self._store.get_images(hashes)
        if len(images) < len(set(hashes)):
            log.warning("conversation %d: %d image(s) past retention are left out", conversation_id,
                        len(set(hashes)) - len(images))
        conversation = await asyncio.to_thread(request_turns, tail, images, budget)
        if sum(len(turn.images) for turn in conversation) < len(hashes):
            log.info("conversation %d: older images are left out to keep the request within its budget",
                     conversation_id)
        return ChatRequest(user=user_key, conversation=conversation, generation=self._generation())

    def _generation(self) -> GenerationParams:
        s = self._settings
        return GenerationParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                                top_k=s.top_k)

    # ---- step 5-6: stream and finish ----

    async def _run_request(self, request: ChatRequest, ask: _Ask, conversation_id: int,
                           turn_id: int) -> AsyncIterator[Reply]:
        request_id = request.request_id
        log.info("request %s: %s, %d turn(s), %d image(s)", request_id, ask.user_key,
                 len(request.conversation), sum(len(turn.images) for turn in request.conversation))
        outcome = _Outcome(placeholder=t("placeholder_waiting", ask.lang))
        running = self._in_flight[request_id] = _InFlight(ask.message.author_id)
        try:
            yield Placeholder(request_id, neutralise_mentions(outcome.placeholder, ask.profile.markup))
            if running.stop_requested:  # Stop was pressed before the request reached the worker
                outcome.done = DoneEvent(text="", finish_reason=FinishReason.CANCELLED,
                                         usage=Usage(prompt_tokens=0, completion_tokens=0))
            else:
                async with aclosing(self._stream(request, ask, outcome)) as replies:
                    async for reply in replies:
                        yield reply
        except WorkerError as exc:
            outcome.error = exc
        except Exception as exc:  # every failure becomes a localised message in _finish
            log.exception("request %s: unexpected error while streaming", request_id)
            outcome.error = exc
        finally:
            self._in_flight.pop(request_id, None)
            if outcome.done is None and outcome.error is None:
                self._cancel_abandoned(request_id, turn_id)
        try:
            ending = await self._finish(request_id, ask, outcome, conversation_id, turn_id)
        except Exception:  # the store failed at the very end: the answer still ends, its text kept
            log.exception("request %s: finishing failed", request_id)
            ending = self._failed(request_id, ask, outcome.text, "internal", t("internal", ask.lang))
        yield ending
        if isinstance(ending, Final) and not ending.cancelled and (
                outcome.done.question_cut or len(ask.message.text) > MAX_TURN_CHARS):
            yield Notice(t("message_cut", ask.lang))

    async def _stream(self, request: ChatRequest, ask: _Ask, outcome: _Outcome) -> AsyncIterator[Reply]:
        """The answer as it grows, within the deadline: past it the worker is told to stop, and the user
        that it took too long (the text so far stays)."""
        deadline = asyncio.get_running_loop().time() + self._settings.worker_request_timeout_s
        async with aclosing(self._events_before(deadline, request)) as events:
            async for reply in self._replies(events, request.request_id, ask, outcome):
                yield reply

    async def _events_before(self, deadline: float, request: ChatRequest) -> AsyncIterator:
        """The worker's events until the deadline. Only the wait for the next event is timed (a timeout
        around a ``yield`` would cancel whatever the adapter awaits in between)."""
        async with aclosing(self._worker.chat(request)) as events:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        event = await anext(events)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    log.warning("request %s: no answer within %.0f s; stopping it", request.request_id,
                                self._settings.worker_request_timeout_s)
                    self._cancel_in_background(request.request_id)
                    raise WorkerTimeout("no answer within WORKER_REQUEST_TIMEOUT_S") from None
                yield event

    async def _replies(self, events: AsyncIterator, request_id: str, ask: _Ask,
                       outcome: _Outcome) -> AsyncIterator[Reply]:
        pacer = EditPacer(ask.profile.edit_interval_s)
        async for event in events:
            if isinstance(event, TokenEvent):
                outcome.text += event.text
                if outcome.text.strip() and pacer.due():
                    yield Streaming(request_id, self._parts(outcome.text, ask.profile))
            elif isinstance(event, DoneEvent):
                outcome.done = event
            else:
                if isinstance(event, RestartedEvent):
                    outcome.text = ""
                    pacer.reset()
                placeholder = self._placeholder_for(event, request_id, ask, outcome)
                if placeholder is not None:
                    yield placeholder

    def _placeholder_for(self, event: QueuedEvent | StartedEvent | RestartedEvent, request_id: str,
                         ask: _Ask, outcome: _Outcome) -> Placeholder | None:
        """The placeholder to show now, or None when it would not change (each edit costs rate limit).
        A queue position shows only while someone is ahead; #1 is about to start ("Thinking…")."""
        position = event.position if isinstance(event, QueuedEvent) and event.position > 1 else None
        if isinstance(event, RestartedEvent):
            text = t("restarted", ask.lang)
        elif position is not None:
            text = t("queued", ask.lang, position=position)
        else:
            text = t("started", ask.lang)
        if text == outcome.placeholder or outcome.text.strip():
            return None
        outcome.placeholder = text
        return Placeholder(request_id, neutralise_mentions(text, ask.profile.markup), position)

    async def _finish(self, request_id: str, ask: _Ask, outcome: _Outcome, conversation_id: int,
                      turn_id: int) -> Failed | Final:
        if outcome.error is not None or outcome.done is None:
            await self._store.set_turn_status(turn_id, "failed")
            code, text = failure_text(outcome.error or RuntimeError("stream ended early"), ask.lang)
            log.warning("request %s failed (%s): %r", request_id, code, outcome.error)
            return self._failed(request_id, ask, outcome.text, code, text)
        done = outcome.done
        if done.finish_reason == FinishReason.CANCELLED:
            await self._store.set_turn_status(turn_id, "cancelled")
            log.info("request %s cancelled after %d token(s)", request_id, done.usage.completion_tokens)
            parts = ending_parts(done.text, t("cancelled_suffix", ask.lang), limit=ask.profile.max_message_chars,
                                 markup=ask.profile.markup)
            return Final(request_id, parts, cancelled=True)
        await self._store.add_turn(conversation_id, role="assistant", text=done.text, status="complete",
                                   request_id=request_id)
        await self._store.set_turn_status(turn_id, "answered")
        log.info("request %s done (%s, %d+%d tokens)", request_id, done.finish_reason,
                 done.usage.prompt_tokens, done.usage.completion_tokens)
        await self._store.apply_retention()
        shown = done.text if done.text.strip() else t("empty_answer", ask.lang)
        return Final(request_id, self._parts(shown, ask.profile))

    @staticmethod
    def _failed(request_id: str, ask: _Ask, kept: str, code: str, text: str) -> Failed:
        """The end of a failed answer: the text streamed so far stays, the failure follows it."""
        parts = ending_parts(kept, text, limit=ask.profile.max_message_chars, markup=ask.profile.markup)
        return Failed(request_id, text, code, parts)

    def _cancel_abandoned(self, request_id: str, turn_id: int) -> None:
        """The adapter stopped listening (or its task was cancelled): stop the worker in the background,
        so that the adapter's task ends at once (shutdown) while the GPU is not left working."""
        log.info("request %s abandoned by its adapter; cancelling", request_id)
        self._cancel_in_background(request_id, turn_id)

    def _cancel_in_background(self, request_id: str, turn_id: int | None = None) -> None:
        """Tell the worker to stop a request (and mark its turn cancelled) without waiting for it."""
        task = asyncio.get_running_loop().create_task(self._cleanup(request_id, turn_id))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _cleanup(self, request_id: str, turn_id: int | None) -> None:
        try:
            await self._worker.cancel(request_id)
            if turn_id is not None:
                await self._store.set_turn_status(turn_id, "cancelled")
        except Exception as exc:  # best effort (the store may be closing); the worker's deadline covers the rest
            log.info("cleanup of request %s incomplete: %r", request_id, exc)

    async def wait_for_cleanups(self) -> None:
        """Wait until the cancellations of abandoned requests are done (tests, orderly shutdown)."""
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)

    @staticmethod
    def _parts(text: str, profile: PlatformProfile) -> tuple[str, ...]:
        return prepare_parts(text, limit=profile.max_message_chars, markup=profile.markup)

