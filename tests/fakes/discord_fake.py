"""A local fake of Discord (REST API, gateway websocket and CDN) for the unmodified discord.py client.

It serves one guild with one text channel, keeps the messages and threads it is told about, dispatches
gateway events the way the real service does (MESSAGE_CREATE for every posted message, THREAD_CREATE after
a thread is started), and records every REST request with a monotonic timestamp so that tests can assert
what the bot did. Details that discord.py 2.7 depends on are listed in ``shared/reference/platforms.md``.

It can be as unkind as the real service, each switch per test:

- CDN bodies go out in pieces over time (:class:`~tests.fakes.bodies.Delivery`; by default 16 KiB a few
  ms apart), and can break off or stall;
- :meth:`FakeDiscord.rate_limit` answers every n-th matching request with a 429 exactly as Discord does
  (JSON body with ``retry_after`` and ``global``, the ``X-RateLimit-*`` headers and ``Via``, which
  discord.py needs to wait and retry instead of treating it as a Cloudflare ban);
- :meth:`FakeDiscord.refuse` answers matching requests with an error such as 403 / 50013 Missing
  Permissions; :meth:`FakeDiscord.delete_message` makes later edits answer 404 / 10008 Unknown Message;
- :meth:`FakeDiscord.drop_gateway` closes the gateway connection; the client RESUMEs (events dispatched
  meanwhile are replayed) or, when the session is not resumable, is told INVALID_SESSION and IDENTIFYs
  again (events meanwhile are lost); :meth:`FakeDiscord.redeliver` dispatches a message once more;
- :meth:`FakeDiscord.after` runs an action right after the first matching request was answered (to
  strike in the middle of an answer).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.bodies import Delivery, SentBody, send_body
from tests.fakes.faults import EveryNth, Hooks
from tests.fakes.loopback import serve_on_loopback, stop_serving

MESSAGE_CONTENT_INTENT = 1 << 15
JSON_HEADERS = {"Content-Type": "application/json"}  # exactly this: discord.py ignores "; charset=..."
GATEWAY_HISTORY = 1_000  # dispatched frames kept for a RESUME


@dataclass
class RecordedRequest:
    method: str
    path: str  # without the /api/v10 prefix
    body: Any
    at: float  # time.monotonic() when the fake received it
    status: int = 200  # what the fake answered


@dataclass
class _Fault:
    """An error answer for matching requests (every time, or every n-th)."""

    method: str
    pattern: re.Pattern[str]
    status: int
    payload: dict[str, Any]
    which: EveryNth
    retry_after: float | None = None  # set for 429s


@dataclass
class FakeUser:
    id: int
    username: str
    bot: bool = False
    roles: tuple[int, ...] = ()

    def payload(self) -> dict[str, Any]:
        return {"id": str(self.id), "username": self.username, "discriminator": "0",
                "global_name": self.username, "avatar": None, "bot": self.bot, "public_flags": 0}

    def member_payload(self, *, with_user: bool = False) -> dict[str, Any]:
        member = {"roles": [str(r) for r in self.roles], "joined_at": _now(), "deaf": False, "mute": False,
                  "flags": 0, "permissions": "2248473465835073"}
        if with_user:
            member["user"] = self.payload()
        return member


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class FakeDiscord:
    """Start with :meth:`start`; drive with :meth:`post_user_message`, :meth:`run_command`, :meth:`click`."""

    guild_locale: str = "en-US"
    message_content_enabled: bool = True  # False: IDENTIFY with the intent is closed with 4014
    requests: list[RecordedRequest] = field(default_factory=list)
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    threads: dict[int, dict[str, Any]] = field(default_factory=dict)
    commands: list[dict[str, Any]] = field(default_factory=list)
    identify: dict[str, Any] | None = None
    delivery: Delivery = field(default_factory=Delivery)  # how CDN bodies are sent
    cdn_bodies: dict[str, SentBody] = field(default_factory=dict)  # by CDN path, the latest response
    gateway_log: list[str] = field(default_factory=list)  # IDENTIFY, RESUME, RESUMED, INVALID_SESSION

    def __post_init__(self) -> None:
        self._ids = itertools.count(1_200_000_000_000_000_000)
        self.application_id = self.new_id()
        self.guild_id = self.new_id()
        self.channel_id = self.new_id()
        self.dm_channel_id = self.new_id()  # the user's DM channel with the bot
        self.member_role_id = self.new_id()
        self.bot_role_id = self.new_id()  # the managed role Discord gives a bot when it joins
        self.bot = FakeUser(self.application_id, "minigpt4", bot=True, roles=(self.bot_role_id,))
        self.user = FakeUser(self.new_id(), "alice", roles=(self.member_role_id,))
        self.stranger = FakeUser(self.new_id(), "mallory")
        self.outsider = FakeUser(self.new_id(), "eve")  # shares no guild with the bot
        self.members = {u.id: u for u in (self.bot, self.user, self.stranger)}
        self._cdn: dict[str, tuple[bytes, str, Delivery | None]] = {}
        self._interaction_channels: dict[str, int] = {}
        self._sockets: list[web.WebSocketResponse] = []
        self._socket: web.WebSocketResponse | None = None  # the connection of the current session
        self._session = 0
        self._resumable = True
        self._seq = itertools.count(1)
        self._frames: list[tuple[int, str]] = []
        self._faults: list[_Fault] = []
        self._hooks = Hooks()
        self._guild_sent = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> FakeDiscord:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{path:.+}", self._cdn_file)
        app.router.add_route("*", "/api/v10/{path:.+}", self._rest)
        self._runner, self.port = await serve_on_loopback(app)
        return self

    async def stop(self) -> None:
        await self._hooks.cancel()
        await stop_serving(self._runner, self._sockets)

    async def struck(self) -> None:
        """Wait until the actions set with :meth:`after` that have started are done."""
        await self._hooks.settle()

    @property
    def api_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    async def wait_ready(self, within: float = 20.0) -> None:
        """Wait until the client identified and received its guild."""
        await asyncio.wait_for(self._guild_sent.wait(), within)

    # ---- what a test does as a Discord user -----------------------------------------------------------

    def new_id(self) -> int:
        return next(self._ids)

    def add_attachment(self, filename: str, data: bytes, content_type: str | None, *,
                       width: int | None = None, height: int | None = None,
                       declared_size: int | None = None, delivery: Delivery | None = None) -> dict[str, Any]:
        """Put a file on the CDN and return its attachment payload (``delivery``: how its body is sent,
        the fake's default when None)."""
        attachment_id = self.new_id()
        path = f"{self.channel_id}/{attachment_id}/{filename}"
        self._cdn[path] = (data, content_type or "application/octet-stream", delivery)
        url = f"http://127.0.0.1:{self.port}/attachments/{path}"
        payload = {"id": str(attachment_id), "filename": filename, "url": url, "proxy_url": url,
                   "size": len(data) if declared_size is None else declared_size}
        if content_type:
            payload["content_type"] = content_type
        if width is not None:
            payload.update(width=width, height=height)
        return payload

    async def post_user_message(self, content: str, *, author: FakeUser | None = None,
                                channel_id: int | None = None, mention_bot: bool = False,
                                mention_bot_role: bool = False, attachments: list[dict[str, Any]] | None = None,
                                reply_to: int | None = None) -> dict[str, Any]:
        """A user posts a message: it is stored and dispatched as MESSAGE_CREATE."""
        author = author or self.user
        if mention_bot:
            content = f"<@{self.bot.id}> {content}"
        if mention_bot_role:
            content = f"<@&{self.bot_role_id}> {content}"
        message = self._message(author, channel_id or self.channel_id, content, attachments or [],
                                mentions=[self.bot.payload()] if mention_bot else [], reply_to=reply_to)
        if mention_bot_role:
            message["mention_roles"] = [str(self.bot_role_id)]
        await self.dispatch("MESSAGE_CREATE", message)
        return message

    async def run_command(self, name: str, *, author: FakeUser | None = None,
                          channel_id: int | None = None, locale: str = "en-US") -> int:
        """A user runs a slash command; returns the interaction id."""
        command = next(c for c in self.commands if c["name"] == name)
        data = {"id": command["id"], "name": name, "type": 1, "options": []}
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        return await self._interact(2, data, author or self.user, channel_id or self.channel_id, locale)

    async def click(self, message_id: int, custom_id: str, *, author: FakeUser | None = None,
                    locale: str = "en-US") -> int:
        """A user presses a button on a message; returns the interaction id."""
        message = self.messages[message_id]
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._interact(3, data, author or self.user, int(message["channel_id"]), locale,
                                    message=message)

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Dispatch a gateway event; while disconnected it waits in the session's history for a RESUME."""
        seq = next(self._seq)
        frame = json.dumps({"op": 0, "t": event, "s": seq, "d": data})
        self._frames = [*self._frames[-GATEWAY_HISTORY + 1:], (seq, frame)]
        if self._socket is not None and not self._socket.closed:
            await self._socket.send_str(frame)

    async def redeliver(self, message: dict[str, Any]) -> None:
        """Deliver a message again, as Discord may after a reconnect."""
        await self.dispatch("MESSAGE_CREATE", message)

    # ---- switchable unkindness ------------------------------------------------------------------------

    def rate_limit(self, method: str, pattern: str, *, every: int, retry_after: float = 1.0,
                   times: int | None = None) -> None:
        """Answer every ``every``-th matching REST request with a 429 (``retry_after`` seconds)."""
        body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": False}
        self._faults.append(_Fault(method, re.compile(pattern), 429, body, EveryNth(every, times), retry_after))

    def refuse(self, method: str, pattern: str, *, status: int, code: int, message: str,
               every: int = 1, times: int | None = None) -> None:
        """Answer matching REST requests with an error, e.g. ``status=403, code=50013`` Missing Permissions."""
        payload = {"message": message, "code": code}
        self._faults.append(_Fault(method, re.compile(pattern), status, payload, EveryNth(every, times)))

    def delete_message(self, message_id: int) -> None:
        """Someone deleted a message: later edits of it answer 404 Unknown Message."""
        self.messages.pop(message_id, None)

    def after(self, method: str, pattern: str, action: Callable[[], Any]) -> None:
        """Start ``action()`` as the fake answers the first REST request matching ``method`` and ``pattern``."""
        self._hooks.add(method, pattern, action)

    async def drop_gateway(self, *, resumable: bool = True) -> None:
        """Close the gateway connection (code 4000). The client reconnects and RESUMEs; with
        ``resumable=False`` the RESUME is answered INVALID_SESSION and the client IDENTIFYs again."""
        self._resumable = resumable
        socket, self._socket = self._socket, None
        if socket is not None:
            await socket.close(code=4000, message=b"Unknown error.")

    def reconnected(self) -> bool:
        """The client is connected again after a drop (RESUMEd, or IDENTIFYed anew)."""
        return self._socket is not None and (self.gateway_log[-1:] == ["RESUMED"]
                                             or self.gateway_log.count("IDENTIFY") > 1)

    # ---- what a test asserts ------------------------------------------------------------------------

    def requests_to(self, method: str, pattern: str) -> list[RecordedRequest]:
        regex = re.compile(pattern)
        return [r for r in self.requests if r.method == method and regex.fullmatch(r.path)]

    def bot_messages(self, channel_id: int) -> list[dict[str, Any]]:
        return [m for m in self.messages.values()
                if int(m["channel_id"]) == channel_id and m["author"]["id"] == str(self.bot.id)]

    async def wait_until(self, condition: Callable[[], Any], within: float = 60.0) -> Any:
        """Poll ``condition`` until it returns something truthy (the fake's state changes as it runs)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            result = condition()
            if result:
                return result
            await asyncio.sleep(0.05)
        raise TimeoutError(f"condition not met within {within}s; requests: {self.requests[-10:]}")

    # ---- payloads ------------------------------------------------------------------------------------

    def _message(self, author: FakeUser, channel_id: int, content: str, attachments: list[dict[str, Any]],
                 *, mentions: list[dict[str, Any]], reply_to: int | None = None,
                 components: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        message = {
            "id": str(self.new_id()), "channel_id": str(channel_id),
            "author": author.payload(), "content": content,
            "timestamp": _now(), "edited_timestamp": None, "tts": False, "mention_everyone": False,
            "mentions": mentions, "mention_roles": [], "attachments": attachments, "embeds": [],
            "pinned": False, "type": 0, "flags": 0, "components": components or [],
        }
        if channel_id != self.dm_channel_id:  # DMs carry no guild and no member
            message.update(guild_id=str(self.guild_id), member=author.member_payload())
        if reply_to is not None:
            referenced = self.messages[reply_to]
            message["type"] = 19
            message["message_reference"] = {"message_id": str(reply_to), "channel_id": str(channel_id),
                                            "guild_id": str(self.guild_id)}
            message["referenced_message"] = referenced
        self.messages[int(message["id"])] = message
        return message

    def _channel_payload(self) -> dict[str, Any]:
        return {"id": str(self.channel_id), "type": 0, "name": "general", "position": 0,
                "guild_id": str(self.guild_id), "permission_overwrites": [], "nsfw": False,
                "parent_id": None, "topic": None, "last_message_id": None, "rate_limit_per_user": 0}

    def _guild_payload(self) -> dict[str, Any]:
        everyone = {"id": str(self.guild_id), "name": "@everyone", "permissions": "2248473465835073",
                    "position": 0, "color": 0, "hoist": False, "managed": False, "mentionable": False,
                    "flags": 0}
        members_role = dict(everyone, id=str(self.member_role_id), name="members", position=1)
        bot_role = dict(everyone, id=str(self.bot_role_id), name="minigpt4", position=2, managed=True,
                        tags={"bot_id": str(self.bot.id)})
        return {
            "id": str(self.guild_id), "name": "test guild", "unavailable": False, "owner_id": str(self.user.id),
            "preferred_locale": self.guild_locale, "roles": [everyone, members_role, bot_role],
            "channels": [self._channel_payload()], "threads": list(self.threads.values()),
            "members": [self.bot.member_payload(with_user=True)], "member_count": 3, "large": False,
            "features": [], "emojis": [], "stickers": [], "voice_states": [], "presences": [],
            "joined_at": _now(), "stage_instances": [], "guild_scheduled_events": [],
        }

    def _thread_payload(self, thread_id: int, name: str) -> dict[str, Any]:
        return {
            "id": str(thread_id), "guild_id": str(self.guild_id), "parent_id": str(self.channel_id),
            "owner_id": str(self.bot.id), "name": name, "type": 11, "last_message_id": None,
            "rate_limit_per_user": 0, "message_count": 0, "member_count": 1, "flags": 0,
            "thread_metadata": {"archived": False, "auto_archive_duration": 1440, "locked": False,
                                "archive_timestamp": _now(), "create_timestamp": _now()},
        }

    async def _interact(self, kind: int, data: dict[str, Any], author: FakeUser, channel_id: int,
                        locale: str, *, message: dict[str, Any] | None = None) -> int:
        interaction_id = self.new_id()
        channel = self.threads.get(channel_id) or self._channel_payload()
        payload = {
            "id": str(interaction_id), "application_id": str(self.application_id), "type": kind,
            "data": data, "guild_id": str(self.guild_id), "channel_id": str(channel_id), "channel": channel,
            "member": author.member_payload(with_user=True), "token": f"itoken-{interaction_id}",
            "version": 1, "locale": locale, "guild_locale": self.guild_locale,
            "app_permissions": "2248473465835073", "attachment_size_limit": 10 * 1024 * 1024,
            "entitlements": [], "authorizing_integration_owners": {"0": str(self.guild_id)}, "context": 0,
        }
        if message is not None:
            payload["message"] = message
        self._interaction_channels[str(interaction_id)] = channel_id
        await self.dispatch("INTERACTION_CREATE", payload)
        return interaction_id

    # ---- gateway -------------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"op": 10, "d": {"heartbeat_interval": 41250}})
        async for frame in ws:
            if frame.type != WSMsgType.TEXT:
                break
            packet = json.loads(frame.data)
            if packet["op"] == 1:
                await ws.send_json({"op": 11})
            elif packet["op"] == 2:
                await self._identified(ws, packet["d"])
            elif packet["op"] == 6:
                await self._resume(ws, packet["d"])
        if ws in self._sockets:
            self._sockets.remove(ws)
        return ws

    async def _identified(self, ws: web.WebSocketResponse, identify: dict[str, Any]) -> None:
        self.identify = identify
        self.gateway_log.append("IDENTIFY")
        if identify["intents"] & MESSAGE_CONTENT_INTENT and not self.message_content_enabled:
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        self._session += 1
        self._seq, self._frames, self._resumable = itertools.count(1), [], True
        self._sockets.append(ws)
        self._socket = ws
        ready = {
            "v": 10, "user": self.bot.payload(), "guilds": [{"id": str(self.guild_id), "unavailable": True}],
            "session_id": f"fake-session-{self._session}", "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": 0}, "private_channels": [],
        }
        await self.dispatch("READY", ready)
        await self.dispatch("GUILD_CREATE", self._guild_payload())
        self._guild_sent.set()

    async def _resume(self, ws: web.WebSocketResponse, resume: dict[str, Any]) -> None:
        """Replay what the client missed, or refuse the session (the client then IDENTIFYs anew)."""
        self.gateway_log.append("RESUME")
        if not self._resumable or resume.get("session_id") != f"fake-session-{self._session}":
            self.gateway_log.append("INVALID_SESSION")
            await ws.send_json({"op": 9, "d": False})
            return
        self._sockets.append(ws)
        self._socket = ws
        for seq, frame in self._frames:
            if seq > (resume.get("seq") or 0):
                await ws.send_str(frame)
        await self.dispatch("RESUMED", {})
        self.gateway_log.append("RESUMED")

    # ---- REST ----------------------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["path"]
        body = await request.json() if request.can_read_body else None
        recorded = RecordedRequest(request.method, path, body, time.monotonic())
        self.requests.append(recorded)
        fault = next((f for f in self._faults if f.method == request.method and f.pattern.fullmatch(path)
                      and f.which.hit()), None)
        if fault is not None:
            recorded.status = fault.status
            return _json_response(fault.status, fault.payload, _rate_limit_headers(fault, path))
        recorded.status, payload = await self._route(request.method, path, body)
        response = _json_response(recorded.status, payload)
        self._hooks.run(request.method, path)
        return response

    async def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        for route_method, pattern, handler in self._routes():
            match = re.fullmatch(pattern, path)
            if route_method == method and match:
                return await handler(body, *match.groups())
        return 404, {"message": "404: Not Found", "code": 0}

    def _routes(self) -> list[tuple[str, str, Callable[..., Any]]]:
        app = r"/applications/(\d+)"
        return [
            ("GET", r"/users/@me", self._get_me),
            ("GET", r"/oauth2/applications/@me", self._get_application),
            ("GET", r"/gateway", self._get_gateway),
            ("POST", r"/channels/(\d+)/messages", self._create_message),
            ("GET", r"/channels/(\d+)/messages/(\d+)", self._get_message),
            ("PATCH", r"/channels/(\d+)/messages/(\d+)", self._edit_message),
            ("POST", r"/channels/(\d+)/typing", self._typing),
            ("POST", r"/channels/(\d+)/messages/(\d+)/threads", self._start_thread),
            ("GET", r"/guilds/(\d+)/members/(\d+)", self._get_member),
            ("POST", r"/interactions/(\d+)/([^/]+)/callback", self._interaction_callback),
            ("PUT", app + r"/commands", self._put_commands),
            ("PUT", app + r"/guilds/(\d+)/commands", self._put_commands),
        ]

    async def _get_me(self, body: Any) -> tuple[int, Any]:
        return 200, self.bot.payload()

    async def _get_application(self, body: Any) -> tuple[int, Any]:
        return 200, {"id": str(self.application_id), "name": "minigpt4", "description": "", "icon": None,
                     "bot_public": True, "bot_require_code_grant": False, "owner": self.user.payload(),
                     "verify_key": "0" * 64, "flags": 0}

    async def _get_gateway(self, body: Any) -> tuple[int, Any]:
        return 200, {"url": self.gateway_url}

    async def _create_message(self, body: dict[str, Any], channel_id: str) -> tuple[int, Any]:
        reference = body.get("message_reference")
        message = self._message(self.bot, int(channel_id), body.get("content") or "", [], mentions=[],
                                reply_to=int(reference["message_id"]) if reference else None,
                                components=body.get("components"))
        await self.dispatch("MESSAGE_CREATE", message)
        return 200, message

    async def _get_message(self, body: Any, channel_id: str, message_id: str) -> tuple[int, Any]:
        message = self.messages.get(int(message_id))
        if message is None:
            return 404, {"message": "Unknown Message", "code": 10008}
        return 200, message

    async def _edit_message(self, body: dict[str, Any], channel_id: str, message_id: str) -> tuple[int, Any]:
        message = self.messages.get(int(message_id))
        if message is None:
            return 404, {"message": "Unknown Message", "code": 10008}
        for key in ("content", "components"):
            if key in body:
                message[key] = body[key] if body[key] is not None else ([] if key == "components" else "")
        message["edited_timestamp"] = _now()
        await self.dispatch("MESSAGE_UPDATE", message)
        return 200, message

    async def _get_member(self, body: Any, guild_id: str, user_id: str) -> tuple[int, Any]:
        member = self.members.get(int(user_id)) if int(guild_id) == self.guild_id else None
        if member is None:
            return 404, {"message": "Unknown Member", "code": 10007}
        return 200, member.member_payload(with_user=True)

    async def _typing(self, body: Any, channel_id: str) -> tuple[int, Any]:
        return 204, None

    async def _start_thread(self, body: dict[str, Any], channel_id: str, message_id: str) -> tuple[int, Any]:
        thread = self._thread_payload(int(message_id), body["name"])  # a thread from a message shares its id
        self.threads[int(message_id)] = thread
        await self.dispatch("THREAD_CREATE", dict(thread, newly_created=True))
        return 201, thread

    async def _interaction_callback(self, body: dict[str, Any], interaction_id: str,
                                    token: str) -> tuple[int, Any]:
        response: dict[str, Any] = {"interaction": {"id": interaction_id, "type": body["type"],
                                                    "response_message_loading": False}}
        data = body.get("data") or {}
        if body["type"] == 4:  # CHANNEL_MESSAGE_WITH_SOURCE
            ephemeral = bool(data.get("flags", 0) & 64)
            channel_id = self._interaction_channels[interaction_id]
            message = self._message(self.bot, channel_id, data.get("content", ""), [], mentions=[])
            message["flags"] = data.get("flags", 0)
            if ephemeral:  # only the user sees it: not part of the channel's history
                del self.messages[int(message["id"])]
            response["interaction"].update(response_message_id=message["id"],
                                           response_message_ephemeral=ephemeral)
            response["resource"] = {"type": 4, "message": message}
        return 200, response

    async def _put_commands(self, body: list[dict[str, Any]], application_id: str,
                            guild_id: str | None = None) -> tuple[int, Any]:
        self.commands = [dict(command, id=str(self.new_id()), application_id=application_id,
                              version=str(self.new_id()), guild_id=guild_id) for command in body]
        return 200, self.commands

    async def _cdn_file(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        self.requests.append(RecordedRequest("GET", "/cdn/" + path, None, time.monotonic()))
        if path not in self._cdn:
            return web.Response(status=404)
        data, content_type, delivery = self._cdn[path]
        record = self.cdn_bodies[path] = SentBody(path, len(data))
        return await send_body(request, data, content_type, delivery or self.delivery, record)


def _json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
    if payload is None:
        return web.Response(status=status)
    return web.Response(status=status, body=json.dumps(payload).encode(), headers={**JSON_HEADERS, **(headers or {})})


def _rate_limit_headers(fault: _Fault, path: str) -> dict[str, str]:
    """The headers of Discord's 429: the bucket, its reset, the scope, and ``Via`` (Discord, not Cloudflare)."""
    if fault.retry_after is None:
        return {}
    return {
        "Retry-After": str(max(1, round(fault.retry_after))), "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": f"{time.time() + fault.retry_after:.3f}",
        "X-RateLimit-Reset-After": f"{fault.retry_after:.3f}", "X-RateLimit-Scope": "user",
        "X-RateLimit-Bucket": f"fake{abs(hash(fault.pattern.pattern)) % 10**8:08d}", "Via": "1.1 google",
    }
