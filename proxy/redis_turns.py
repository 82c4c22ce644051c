"""One turn at a time per agent across workers and replicas: the turn queue kept in Redis.

The guarantee: turns for one key are granted strictly in the order their first request reached Redis
(a ticket from one `INCR`, kept in a sorted set), skipping waiters whose lease has lapsed; only the
queue's head holds the key. Each entry carries a lease (Redis's own clock, `TIME`) that its live process
renews (a waiter every poll, a holder every third of the lease), so a crashed process frees the key
within one lease (plus one poll). A waiter learns of a release at once when it happened in its own
process, else at its next poll (a few ms, backing off to `MAX_POLL`): Redis itself pushes nothing here.

Redis unreachable: a turn not yet granted gets a 503 at once and never reaches Letta; a turn already
granted goes on (its renewals retry). Redis restarted (its state lost): a holder's next renewal
re-takes its key ahead of everyone, and no key is granted for one lease after the loss, which the
scripts notice by a missing marker key, so that a turn still running never overlaps a new one.
"""

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio
from redis.exceptions import RedisError

from proxy.errors import ProxyError, unavailable
from proxy.turns import TurnQueue

log = logging.getLogger("proxy")
FIRST_POLL = 0.005  # seconds a waiter first waits between looks at the queue, doubling up to MAX_POLL
MAX_POLL = 0.05

# KEYS: the key's queue (sorted set token -> ticket), its leases (hash token -> expiry ms), the ticket
# counter, the marker. ARGV: token, lease ms, "hold" or "wait". Returns 1 when the token holds the key,
# 0 when it waits, 2 when a holder had to re-take a key it had lost (Redis lost its state).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
local retaken = 0
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if ARGV[3] == 'hold' then
    redis.call('ZADD', KEYS[1], 0, ARGV[1])
    retaken = 1
  else
    redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[3]), ARGV[1])
  end
end
redis.call('HSET', KEYS[2], ARGV[1], now + lease)
redis.call('PEXPIRE', KEYS[1], 2 * lease)
redis.call('PEXPIRE', KEYS[2], 2 * lease)
local head
while true do
  head = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  local expiry = tonumber(redis.call('HGET', KEYS[2], head) or '0')
  if expiry >= now then break end
  redis.call('ZREM', KEYS[1], head)
  redis.call('HDEL', KEYS[2], head)
end
local marker = redis.call('GET', KEYS[4])
if not marker then
  redis.call('SET', KEYS[4], now + lease)
  marker = now + lease
end
if ARGV[3] == 'hold' then return 1 + retaken end
if head == ARGV[1] and now >= tonumber(marker) then return 1 end
return 0
"""

# KEYS: queue, leases. ARGV: token.
_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""


@dataclass
class _Local:
    """This process's turns for one key: how many, and the event its next release sets."""

    users: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)


class RedisTurns(TurnQueue):
    """`enter(key) -> release()` as `TurnQueue`'s, with the queue in Redis (see the module's guarantee)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        timeout: float,
        lease_seconds: float,
        prefix: str = "letta-openai-proxy:turns:",
    ) -> None:
        super().__init__(timeout)
        self._redis = client
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._renew_every = lease_seconds / 3
        self._prefix = prefix
        self._take = client.register_script(_TAKE)
        self._leave_script = client.register_script(_LEAVE)
        self._local: dict[str, _Local] = {}
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """At start-up: a missing marker means a fresh Redis, which nothing can hold, so no grace.
        Redis down now is no reason not to serve: turns get their 503 until it is back."""
        try:
            await self._redis.set(self._prefix + "marker", 0, nx=True)
        except RedisError as exc:
            log.warning("Redis (PROXY_REDIS_URL) did not answer at start-up: %s", exc.__class__.__name__)

    async def _acquire(self, key: str) -> Callable[[], None]:
        token = uuid.uuid4().hex
        local = self._local.setdefault(key, _Local())
        local.users += 1
        try:
            async with asyncio.timeout(self._timeout):
                await self._wait(key, token, local)
        except BaseException as exc:
            self._end(key, token, local)
            if isinstance(exc, TimeoutError):
                raise self._busy() from None
            if isinstance(exc, RedisError):
                raise _unavailable(exc) from None
            raise
        renewal = asyncio.create_task(self._renew(key, token))

        def release() -> None:
            renewal.cancel()
            self._end(key, token, local)

        return release

    async def _wait(self, key: str, token: str, local: _Local) -> None:
        poll = FIRST_POLL
        while True:
            woken = local.released
            if await self._call_take(key, token, "wait") == 1:
                return
            try:
                async with asyncio.timeout(poll):
                    await woken.wait()
                poll = FIRST_POLL
            except TimeoutError:
                poll = min(poll * 2, MAX_POLL)

    async def _call_take(self, key: str, token: str, mode: str) -> int:
        keys = [*self._keys(key), self._prefix + "tickets", self._prefix + "marker"]
        return int(await self._take(keys=keys, args=[token, self._lease_ms, mode]))

    def _keys(self, key: str) -> list[str]:
        return [f"{self._prefix}{key}:queue", f"{self._prefix}{key}:leases"]

    async def _renew(self, key: str, token: str) -> None:
        """The holder's lease, renewed until release; a failed renewal is retried, the turn goes on."""
        while True:
            await asyncio.sleep(self._renew_every)
            try:
                if await self._call_take(key, token, "hold") == 2:
                    log.warning("the turn lock was lost (Redis restarted or this process stalled): re-taken")
            except RedisError as exc:
                log.warning("renewing a turn lock failed: %s", exc.__class__.__name__)

    def _end(self, key: str, token: str, local: _Local) -> None:
        """Leaves the queue in the background (a cancelled waiter cannot await), then wakes local waiters."""
        task = asyncio.create_task(self._leave(key, token, local))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _leave(self, key: str, token: str, local: _Local) -> None:
        try:
            await self._leave_script(keys=self._keys(key), args=[token])
        except RedisError as exc:  # the entry's lease frees the key within one lease
            log.warning("leaving a turn lock failed: %s", exc.__class__.__name__)
        finally:
            local.users -= 1
            local.released.set()
            local.released = asyncio.Event()
            if local.users == 0 and self._local.get(key) is local:
                del self._local[key]

    async def aclose(self) -> None:
        """At shutdown: the last releases reach Redis before its connections close."""
        if self._pending:
            await asyncio.wait(self._pending, timeout=5)


def _unavailable(exc: RedisError) -> ProxyError:
    return unavailable(
        f"The turn lock (Redis) is unavailable ({exc.__class__.__name__}); the turn was not sent.",
        "lock_unavailable",
    )
