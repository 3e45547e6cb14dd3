"""A fake Slack on 127.0.0.1: the Web API methods the bot uses, a Socket Mode websocket, and a file host.

The unmodified ``slack_sdk`` / ``slack_bolt`` clients talk to it over real HTTP and websockets. Every Web API
call is recorded (method, arguments, bearer token) so that tests assert what Slack would have received.

It can be as unkind as the real service, each switch per test:

- file bodies go out in pieces over time (:class:`~tests.fakes.bodies.Delivery`; by default 16 KiB a few
  ms apart), and can break off or stall;
- :meth:`FakeSlack.rate_limit` answers every n-th call of a method with HTTP 429, ``Retry-After`` and
  ``{"ok": false, "error": "ratelimited"}``, as Slack does per method and channel;
- :meth:`FakeSlack.fail` answers calls with an error code (``not_in_channel``, ``channel_not_found``,
  ``is_archived``...); :meth:`FakeSlack.delete_message` makes ``chat.update`` answer ``message_not_found``;
- :meth:`FakeSlack.disconnect` sends Socket Mode's ``disconnect`` envelope; the client opens a new
  connection (``apps.connections.open``) and the given envelopes are delivered again on it;
- :meth:`FakeSlack.after` runs an action as the first matching call is answered (to strike in the
  middle of an answer).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.bodies import Delivery, SentBody, send_body
from tests.fakes.faults import EveryNth, Hooks
from tests.fakes.loopback import serve_on_loopback, stop_serving

BOT_TOKEN = "xoxb-fake-bot-token"
APP_TOKEN = "xapp-fake-app-token"
TEAM_ID = "T0FAKE"
BOT_USER_ID = "U0BOT"
BOT_ID = "B0BOT"
APP_ID = "A0APP"
UPDATE_LIMIT = 4000  # chat.update answers msg_too_long above about this many characters in practice

LOGIN_PAGE = "<!DOCTYPE html><html><head><title>Slack</title></head><body>Sign in to Slack</body></html>"


@dataclass
class ApiCall:
    method: str
    args: dict[str, Any]
    token: str | None
    received_at: float = field(default_factory=time.monotonic)
    result: dict[str, Any] = field(default_factory=dict)  # what the fake answered


@dataclass
class FakeFile:
    name: str
    mimetype: str
    content: bytes
    readable: bool = True  # False: as if the app lacked files:read or the file was not shared with it
    delivery: Delivery | None = None  # how the body is sent; the fake's default when None


@dataclass
class _Fault:
    """An error answer for calls of one method whose arguments include ``args`` (every n-th, or all)."""

    method: str
    error: str
    args: dict[str, Any]
    which: EveryNth
    retry_after: int | None = None  # set for 429s


@dataclass
class FakeSlack:
    """Start with ``await fake.start()``; stop with ``await fake.stop()``."""

    user_locales: dict[str, str] = field(default_factory=dict)
    calls: list[ApiCall] = field(default_factory=list)
    file_requests: list[dict[str, str | None]] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)  # posted to response_url
    acks: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, FakeFile] = field(default_factory=dict)
    delivery: Delivery = field(default_factory=Delivery)  # how file bodies are sent
    file_bodies: dict[str, SentBody] = field(default_factory=dict)  # by file id, the latest response
    connections: int = 0  # Socket Mode connections opened so far
    port: int = 0

    def __post_init__(self) -> None:
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self._sockets: list[web.WebSocketResponse] = []
        self._connected = asyncio.Event()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._faults: list[_Fault] = []
        self._hooks = Hooks()
        self._posted: set[tuple[str, str]] = set()  # (channel, ts) of messages that exist

    # ---- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)  # slack_sdk sends a few methods (users.info) as GET
        app.router.add_get("/socket", self._socket)
        app.router.add_get("/files/{file_id}", self._file)
        app.router.add_post("/respond/{command_id}", self._respond)
        self._runner, self.port = await serve_on_loopback(app)

    async def stop(self) -> None:
        await self._hooks.cancel()
        await stop_serving(self._runner, self._sockets)

    async def struck(self) -> None:
        """Wait until the actions set with :meth:`after` that have started are done."""
        await self._hooks.settle()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    # ---- what tests use ----------------------------------------------------------------------

    def add_file(self, name: str, mimetype: str, content: bytes, *, readable: bool = True,
                 declared_size: int | None = None, delivery: Delivery | None = None) -> dict[str, Any]:
        """Host a file; returns the ``files[]`` entry an event carries for it."""
        file_id = f"F{next(self._ids):06d}"
        self.files[file_id] = FakeFile(name, mimetype, content, readable, delivery)
        url = f"{self.base_url}/files/{file_id}"
        return {"id": file_id, "name": name, "mimetype": mimetype,
                "size": len(content) if declared_size is None else declared_size,
                "url_private": url, "url_private_download": url + "?download=1"}

    # ---- switchable unkindness ---------------------------------------------------------------

    def rate_limit(self, method: str, *, every: int, retry_after: int = 1, times: int | None = None) -> None:
        """Answer every ``every``-th call of ``method`` with HTTP 429 and ``Retry-After: retry_after``."""
        self._faults.append(_Fault(method, "ratelimited", {}, EveryNth(every, times), retry_after))

    def fail(self, method: str, error: str, *, every: int = 1, times: int | None = None, **args: Any) -> None:
        """Answer calls of ``method`` whose arguments include ``args`` with ``{"ok": false, "error": error}``."""
        self._faults.append(_Fault(method, error, args, EveryNth(every, times)))

    def delete_message(self, channel: str, ts: str) -> None:
        """Someone deleted a message: ``chat.update`` of it answers ``message_not_found``."""
        self._posted.discard((channel, ts))

    def after(self, method: str, action: Callable[[], Any]) -> None:
        """Start ``action()`` as the fake answers the first call of ``method``."""
        self._hooks.add("POST", re.escape(method), action)

    async def disconnect(self, *, announced: bool = True, reason: str = "refresh_requested",
                         redeliver: list[dict[str, Any]] | None = None) -> None:
        """Send the ``disconnect`` envelope (``announced=False``: just drop the connection); once the client
        has connected again, deliver ``redeliver`` again (each with its retry attempt raised, as Slack
        does for events it is unsure about)."""
        old, before = self._sockets[-1], self.connections
        if announced:
            await old.send_str(json.dumps({"type": "disconnect", "reason": reason,
                                           "debug_info": {"host": "fake-slack"}}))
        else:
            await old.close()
        await self.wait_for(lambda: self.connections > before, within_s=20)
        await old.close()
        for envelope in redeliver or []:
            attempt = envelope.get("retry_attempt", 0) + 1
            await self.push(dict(envelope, envelope_id=f"{envelope['envelope_id']}-r{attempt}",
                                 retry_attempt=attempt, retry_reason="timeout"))

    def calls_to(self, method: str, **args: Any) -> list[ApiCall]:
        """Recorded calls of ``method`` whose arguments include ``args``."""
        return [call for call in self.calls
                if call.method == method and all(call.args.get(k) == v for k, v in args.items())]

    def thread_posts(self, channel: str, thread_ts: str | None) -> list[ApiCall]:
        """Messages posted (not ephemeral, not refused) in one thread, oldest first."""
        return [call for call in self.calls_to("chat.postMessage", channel=channel)
                if call.args.get("thread_ts") == thread_ts and call.result.get("ok")]

    def shown_text(self, channel: str, ts: str) -> str:
        """A posted message's text after every edit."""
        return self._last_write(channel, ts).args["text"]

    def shows_buttons(self, channel: str, ts: str) -> bool:
        """Whether a posted message carries buttons (an ``actions`` block) after every edit."""
        blocks = self._last_write(channel, ts).args.get("blocks") or []
        blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
        return any(block.get("type") == "actions" for block in blocks)

    def exists(self, channel: str, ts: str) -> bool:
        """The message was posted and not deleted."""
        return (channel, ts) in self._posted

    def _last_write(self, channel: str, ts: str) -> ApiCall:
        updates = [call for call in self.calls_to("chat.update", channel=channel, ts=ts) if call.result.get("ok")]
        if updates:
            return updates[-1]
        return next(call for call in self.calls_to("chat.postMessage", channel=channel)
                    if call.result.get("ts") == ts)

    def next_ts(self) -> str:
        return f"1700000000.{next(self._ts):06d}"

    async def wait_connected(self) -> None:
        async with asyncio.timeout(10):
            await self._connected.wait()

    async def push(self, envelope: dict[str, Any]) -> None:
        """Send a Socket Mode envelope to the connected app."""
        await self.wait_connected()
        await self._sockets[-1].send_str(json.dumps(envelope))

    async def wait_for(self, predicate: Callable[[], bool], *, within_s: float = 60.0) -> None:
        """Wait until ``predicate()`` holds (checked whenever the fake records something)."""
        async with asyncio.timeout(within_s), self._changed:
            await self._changed.wait_for(predicate)

    async def _record_change(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ---- Web API -----------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await _request_args(request)
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else args.get("token")
        call = ApiCall(method, args, token)
        fault = next((f for f in self._faults if f.method == method
                      and all(args.get(k) == v for k, v in f.args.items()) and f.which.hit()), None)
        call.result = {"ok": False, "error": fault.error} if fault else self._answer(method, args, token)
        self.calls.append(call)
        await self._record_change()
        if fault is not None and fault.retry_after is not None:
            return web.json_response(call.result, status=429, headers={"Retry-After": str(fault.retry_after)})
        response = web.json_response(call.result)
        self._hooks.run("POST", method)
        return response

    def _answer(self, method: str, args: dict[str, Any], token: str | None) -> dict[str, Any]:
        expected = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token != expected:
            return {"ok": False, "error": "invalid_auth"}
        handler = {
            "auth.test": self._auth_test,
            "apps.connections.open": self._connections_open,
            "chat.postMessage": self._post_message,
            "chat.postEphemeral": lambda a: {"ok": True, "message_ts": self.next_ts()},
            "chat.update": self._update,
            "users.info": self._users_info,
        }.get(method, lambda a: {"ok": True})
        return handler(args)

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://fake.slack.com/", "team": "Fake", "user": "minigpt4",
                "team_id": TEAM_ID, "user_id": BOT_USER_ID, "bot_id": BOT_ID, "is_enterprise_install": False}

    def _connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/socket?ticket=t{next(self._ids)}"}

    def _post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        ts = self.next_ts()
        self._posted.add((str(args.get("channel")), ts))
        return {"ok": True, "channel": args.get("channel"), "ts": ts,
                "message": {"text": args.get("text"), "ts": ts, "user": BOT_USER_ID, "bot_id": BOT_ID}}

    def _update(self, args: dict[str, Any]) -> dict[str, Any]:
        if (str(args.get("channel")), str(args.get("ts"))) not in self._posted:
            return {"ok": False, "error": "message_not_found"}
        if len(args.get("text") or "") > UPDATE_LIMIT:
            return {"ok": False, "error": "msg_too_long"}
        return {"ok": True, "channel": args.get("channel"), "ts": args.get("ts"), "text": args.get("text")}

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user_id = str(args.get("user"))
        user: dict[str, Any] = {"id": user_id, "name": f"user-{user_id.lower()}", "team_id": TEAM_ID}
        if str(args.get("include_locale")).lower() in ("true", "1"):
            user["locale"] = self.user_locales.get(user_id, "en-US")
        return {"ok": True, "user": user}

    # ---- files and response_url ----------------------------------------------------------------

    async def _file(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization")
        self.file_requests.append({"path": request.path, "authorization": auth})
        await self._record_change()
        file_id = request.match_info["file_id"]
        stored = self.files.get(file_id)
        if stored is None or not stored.readable or auth != f"Bearer {BOT_TOKEN}":
            # Slack answers 200 with its sign-in page when the token may not read the file.
            return web.Response(text=LOGIN_PAGE, content_type="text/html")
        record = self.file_bodies[file_id] = SentBody(file_id, len(stored.content))
        return await send_body(request, stored.content, stored.mimetype, stored.delivery or self.delivery, record)

    async def _respond(self, request: web.Request) -> web.Response:
        self.responses.append(await request.json())
        await self._record_change()
        return web.Response(text="ok")

    def response_url(self, command_id: str = "c1") -> str:
        return f"{self.base_url}/respond/{command_id}"

    # ---- Socket Mode -------------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_str(json.dumps({"type": "hello", "num_connections": 1,
                                      "connection_info": {"app_id": APP_ID}}))
        self._connected.set()
        self.connections += 1
        await self._record_change()
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                self.acks.append(json.loads(message.data))
                await self._record_change()
        self._sockets.remove(ws)
        return ws


async def _request_args(request: web.Request) -> dict[str, Any]:
    args: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        args.update(await request.json())
    elif request.can_read_body:
        args.update(dict(await request.post()))
    return args


# ---- payload builders for tests -------------------------------------------------------------------


def event_callback(event: dict[str, Any], *, event_id: str) -> dict[str, Any]:
    """The Events API body Slack sends for ``event``."""
    return {
        "token": "legacy-verification-token", "team_id": TEAM_ID, "api_app_id": APP_ID,
        "event": event, "type": "event_callback", "event_id": event_id, "event_time": 1700000000,
        "authorizations": [{"team_id": TEAM_ID, "user_id": BOT_USER_ID, "is_bot": True}],
    }


def events_envelope(event: dict[str, Any], *, event_id: str, retry_attempt: int = 0) -> dict[str, Any]:
    """A Socket Mode ``events_api`` envelope; a retry carries the same event id with a higher attempt."""
    return {
        "envelope_id": f"env-{event_id}-{retry_attempt}", "type": "events_api",
        "accepts_response_payload": False, "retry_attempt": retry_attempt,
        "retry_reason": "timeout" if retry_attempt else "",
        "payload": event_callback(event, event_id=event_id),
    }


def command_envelope(fake: FakeSlack, *, text: str, user: str, channel: str) -> dict[str, Any]:
    """A Socket Mode ``slash_commands`` envelope for ``/minigpt4 <text>``."""
    return {
        "envelope_id": f"env-cmd-{next(fake._ids)}", "type": "slash_commands", "accepts_response_payload": True,
        "payload": {
            "token": "legacy-verification-token", "team_id": TEAM_ID, "team_domain": "fake",
            "channel_id": channel, "channel_name": "general", "user_id": user, "user_name": "someone",
            "command": "/minigpt4", "text": text, "api_app_id": APP_ID, "is_enterprise_install": "false",
            "response_url": fake.response_url(), "trigger_id": "trigger-1",
        },
    }


def action_envelope(fake: FakeSlack, *, action_id: str, value: str, user: str, channel: str,
                    message_ts: str, thread_ts: str | None = None) -> dict[str, Any]:
    """A Socket Mode ``interactive`` envelope: ``user`` clicked a button on the bot's message."""
    return {
        "envelope_id": f"env-act-{next(fake._ids)}", "type": "interactive", "accepts_response_payload": False,
        "payload": {
            "type": "block_actions", "team": {"id": TEAM_ID}, "user": {"id": user, "team_id": TEAM_ID},
            "api_app_id": APP_ID, "token": "legacy-verification-token", "trigger_id": "trigger-2",
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel},
            "channel": {"id": channel}, "response_url": fake.response_url("a1"),
            "message": {"ts": message_ts, "thread_ts": thread_ts, "user": BOT_USER_ID, "bot_id": BOT_ID},
            "actions": [{"type": "button", "action_id": action_id, "block_id": "b1", "value": value,
                         "action_ts": "1700000001.000001"}],
        },
    }
