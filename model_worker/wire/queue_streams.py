"""The Redis Streams layout shared by the bot's queue client and the workers' queue consumer.

One stream holds the jobs; the workers form one consumer group on it, so each job is delivered to one
worker, and a job whose worker dies stays pending until another worker claims it. Around the stream:

- ``{stream}:events:{request_id}``: a per-request stream of ``(attempt, event)`` entries written by the
  worker that runs the job, read by the bot that asked; it expires a while after the last event.
- ``{stream}:image:{sha256}``: image bytes, stored once by content hash with a time-to-live; jobs carry
  only the hash.
- ``{stream}:cancel:{request_id}``: set by the bot to stop a job wherever it runs.
- ``{stream}:attempt:{request_id}``: incremented each time a worker starts the job; events carry it, so
  events of a superseded attempt can be ignored.
- ``{stream}:worker:{consumer}``: each worker's readiness, refreshed while it runs.
- ``{stream}:reservations``: places in the queue held by bots while they upload a job's images (a sorted set
  of request ids by expiry time), so that a full queue refuses a job before its images are sent.
- ``{stream}:dead``: the dead-letter stream: jobs that failed on every attempt, or with an unexpected error,
  with the reason, for an operator to inspect (``XRANGE minigpt4:jobs:dead - +``).

This module imports only the Redis client and the wire protocol, so the bot can use it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from model_worker.wire.protocol import DoneEvent, Event, FinishReason, Usage, parse_event

DEFAULT_STREAM = "minigpt4:jobs"
DEFAULT_GROUP = "workers"
#: How long a blocking read waits before the caller gets control back (ms).
BLOCK_MS = 1000
#: A job whose worker has been silent this long is taken over by another worker (ms).
DEFAULT_CLAIM_IDLE_MS = 30_000
#: How long a request's events (and its cancel and attempt keys) outlive its last event (s).
EVENTS_TTL_S = 900
#: How long an image's bytes are kept after the last request that referred to them (s).
IMAGE_TTL_S = 3600
#: How many times a job is started (by any worker) before it goes to the dead-letter stream.
DEFAULT_MAX_ATTEMPTS = 3
#: How long a bot's place in the queue is held while it uploads the job's images (ms).
RESERVATION_TTL_MS = 30_000
#: Entries the dead-letter stream keeps (the oldest go first).
DEAD_LETTER_MAXLEN = 10_000


@dataclass(frozen=True)
class QueueKeys:
    """Key names derived from the jobs stream's name, so several deployments can share one Redis."""

    stream: str = DEFAULT_STREAM
    group: str = DEFAULT_GROUP

    def events(self, request_id: str) -> str:
        return f"{self.stream}:events:{request_id}"

    def image(self, sha256: str) -> str:
        return f"{self.stream}:image:{sha256}"

    def cancel(self, request_id: str) -> str:
        return f"{self.stream}:cancel:{request_id}"

    def attempt(self, request_id: str) -> str:
        return f"{self.stream}:attempt:{request_id}"

    def worker(self, consumer: str) -> str:
        return f"{self.stream}:worker:{consumer}"

    @property
    def reservations(self) -> str:
        return f"{self.stream}:reservations"

    @property
    def dead(self) -> str:
        return f"{self.stream}:dead"

    @property
    def worker_pattern(self) -> str:
        return f"{self.stream}:worker:*"


def connect(url: str, *, connect_timeout: float = 2.0) -> Redis:
    """A client for ``redis://`` or ``rediss://`` that fails fast instead of retrying.

    A failed command raises at once (the caller turns that into a clear error and tries again later);
    the connection pool reconnects by itself on the next command once Redis is back.
    """
    return Redis.from_url(
        url,
        socket_connect_timeout=connect_timeout,
        socket_timeout=BLOCK_MS / 1000 + 5.0,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
    )


def encode_event(attempt: int, event: Event) -> dict[str, str]:
    """The fields of one entry on a per-request events stream."""
    return {"attempt": str(attempt), "event": event.model_dump_json(exclude_none=True)}


def decode_event(fields: dict[bytes, bytes]) -> tuple[int, Event]:
    """``(attempt, event)`` from an events-stream entry (raises ``ValueError`` when malformed)."""
    return int(fields[b"attempt"]), parse_event(fields[b"event"])


def cancelled_before_start() -> DoneEvent:
    """The ``done`` event of a job cancelled before any worker started it."""
    return DoneEvent(text="", finish_reason=FinishReason.CANCELLED,
                     usage=Usage(prompt_tokens=0, completion_tokens=0))


# Lua runs atomically on the server: no worker can take a job between the check and the change.
_LIB = """
local function after(a, b)
  local ams, aseq = string.match(a, "(%d+)-(%d+)")
  local bms, bseq = string.match(b, "(%d+)-(%d+)")
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams > bms or (ams == bms and aseq > bseq)
end
local function last_delivered(stream, group)
  if redis.call("EXISTS", stream) == 0 then return nil end
  for _, g in ipairs(redis.call("XINFO", "GROUPS", stream)) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info["name"] == group then return info["last-delivered-id"] end
  end
  return nil
end
local function now_ms()
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function ensure_group(stream, group)
  local last = last_delivered(stream, group)
  if not last then
    redis.call("XGROUP", "CREATE", stream, group, "0", "MKSTREAM")
    last = "0-0"
  end
  return last
end
local function waiting(stream, last, upto, limit)
  if limit then
    return #redis.call("XRANGE", stream, "(" .. last, upto, "COUNT", limit)
  end
  return #redis.call("XRANGE", stream, "(" .. last, upto)
end
"""

#: KEYS: stream, reservations; ARGV: group, max waiting, request id, hold time (ms).
#: Holds a place for the request while its images are uploaded: returns ``{1, waiting}``, or
#: ``{false, waiting}`` when the waiting jobs and the places held already fill the queue.
RESERVE_SCRIPT = _LIB + """
local now = now_ms()
redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", now)
local last = ensure_group(KEYS[1], ARGV[1])
local ahead = waiting(KEYS[1], last, "+", tonumber(ARGV[2])) + redis.call("ZCARD", KEYS[2])
if ahead >= tonumber(ARGV[2]) then return {false, ahead} end
redis.call("ZADD", KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
return {1, ahead}
"""

#: KEYS: stream, reservations, then the request's events, cancel and attempt keys (cleared: a reused id
#: starts afresh); ARGV: group, max waiting, request id, request JSON.
#: Uses the request's reservation when it still holds one (otherwise checks for room again).
#: Returns ``{entry id, position}``, or ``{false, waiting}`` when the queue is full.
ENQUEUE_SCRIPT = _LIB + """
local last = ensure_group(KEYS[1], ARGV[1])
local ahead = waiting(KEYS[1], last, "+", nil)
if redis.call("ZREM", KEYS[2], ARGV[3]) == 0 and ahead >= tonumber(ARGV[2]) then return {false, ahead} end
redis.call("DEL", KEYS[3], KEYS[4], KEYS[5])
local id = redis.call("XADD", KEYS[1], "*", "request_id", ARGV[3], "request", ARGV[4])
return {id, ahead + 1}
"""

#: KEYS: stream; ARGV: group, entry id. Returns the entry's place among the jobs no worker has taken
#: yet (1 = next), 0 once a worker took it, -1 when the queue itself is gone (Redis lost its data).
POSITION_SCRIPT = _LIB + """
local last = last_delivered(KEYS[1], ARGV[1])
if not last then return -1 end
if not after(ARGV[2], last) then return 0 end
return waiting(KEYS[1], last, ARGV[2], nil)
"""

#: KEYS: stream; ARGV: group, entry id. Deletes the job if no worker has taken it yet; returns 1 if so.
WITHDRAW_SCRIPT = _LIB + """
local last = last_delivered(KEYS[1], ARGV[1])
if not last or not after(ARGV[2], last) then return 0 end
return redis.call("XDEL", KEYS[1], ARGV[2])
"""

#: KEYS: stream; ARGV: group, consumer, entry ids... Resets the idle time of the entries this consumer
#: still owns (so no other worker reclaims a live job) and returns those another consumer now owns.
TOUCH_SCRIPT = """
local lost = {}
for i = 3, #ARGV do
  local p = redis.call("XPENDING", KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 then
    if p[1][2] == ARGV[2] then
      redis.call("XCLAIM", KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], "JUSTID")
    else
      table.insert(lost, ARGV[i])
    end
  end
end
return lost
"""

#: KEYS: stream; ARGV: group. The number of jobs no worker has taken yet (the shared backlog).
BACKLOG_SCRIPT = _LIB + """
local last = last_delivered(KEYS[1], ARGV[1])
if not last then return 0 end
return waiting(KEYS[1], last, "+", nil)
"""
