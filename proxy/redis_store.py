"""The model-scope store in Redis, shared by replicas: same contract as `proxy.sessions.MemoryStore`."""

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from proxy.sessions import SessionStoreError, check_limits, check_namespace

REDIS_TIMEOUT = 2.0  # seconds to connect or to answer one command: a stuck Redis must not hold a turn
REDIS_RETRIES = 1  # one quick reconnect covers a dropped pooled connection; more would only delay the 503
REDIS_CONNECTIONS = 50  # per replica; a burst beyond it waits up to REDIS_TIMEOUT for a free connection


# Both scripts run atomically in Redis, so replicas racing on one namespace cannot break the bound.
# KEYS[1]: the namespace's index, a sorted set of session keys by last use; KEYS[2]: the value's key.
# Scores are Redis's own clock in microseconds, forced strictly increasing so that LRU order holds for
# uses within one microsecond and across clock steps (replica clocks are never consulted).
_NEXT_SCORE = """
local t = redis.call('TIME')
local score = tonumber(t[1]) * 1000000 + tonumber(t[2])
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if top[2] and tonumber(top[2]) >= score then score = tonumber(top[2]) + 1 end
"""

# ARGV: session key, idle ms.  The index lives as long as its newest value, so it never outlives them.
_GET = (
    """
local value = redis.call('GETEX', KEYS[2], 'PX', ARGV[2])
if not value then return false end
"""
    + _NEXT_SCORE
    + """
redis.call('ZADD', KEYS[1], score, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return value
"""
)

# ARGV: session key, value, idle ms, max entries, prefix of the namespace's value keys.
# Members idle longer than the expiry are dropped first (their values already expired), then the least
# recently used beyond the bound, whose values are deleted with them.
_SET = (
    """
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
"""
    + _NEXT_SCORE
    + """
local idle = tonumber(ARGV[3]) * 1000
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', score - idle - 1)  -- a number: exact, no %.14g
for _, member in ipairs(stale) do redis.call('DEL', ARGV[5] .. member) end
if #stale > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, #stale - 1) end
redis.call('ZADD', KEYS[1], score, ARGV[1])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if over > 0 then
  for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, over - 1)) do
    redis.call('DEL', ARGV[5] .. member)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)


def connect(url: str) -> redis.asyncio.Redis:
    """The one Redis client of a process, shared by the session store, the turn lock and idempotency."""
    # A blocking pool: the plain one fails at once when a burst outnumbers its connections.
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_CONNECTIONS,
        timeout=REDIS_TIMEOUT,
        decode_responses=True,
        socket_connect_timeout=REDIS_TIMEOUT,
        socket_timeout=REDIS_TIMEOUT,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), REDIS_RETRIES),
    )
    return redis.asyncio.Redis.from_pool(pool)


class RedisStore:
    """Values at `prefix + namespace + ":" + key` with a sliding `PX` expiry, one index per namespace.

    The index (`prefix + namespace`, a sorted set) bounds each namespace to `max_entries_per_namespace`;
    the evicted keys' values are deleted in the same script. Needs Redis >= 6.2 (GETEX); a single
    server or a primary with replicas, not Redis Cluster (a script touches keys it cannot declare).
    """

    def __init__(
        self,
        url: str | redis.asyncio.Redis,
        idle_seconds: float = 86_400,
        max_entries_per_namespace: int = 10_000,
        prefix: str = "letta-openai-proxy:",
    ) -> None:
        check_limits(max_entries_per_namespace, idle_seconds)
        self._idle_ms = max(1, round(idle_seconds * 1000))
        self._max = max_entries_per_namespace
        self._prefix = prefix
        self._redis = connect(url) if isinstance(url, str) else url  # a URL, or the process's client
        self._get = self._redis.register_script(_GET)
        self._set = self._redis.register_script(_SET)

    async def get(self, namespace: str, key: str) -> str | None:
        check_namespace(namespace)
        try:
            value = await self._get(
                keys=[self._prefix + namespace, f"{self._prefix}{namespace}:{key}"],
                args=[key, self._idle_ms],
            )
        except RedisError as exc:
            raise _failure(exc) from exc
        return value if isinstance(value, str) else None

    async def set(self, namespace: str, key: str, value: str) -> None:
        check_namespace(namespace)
        try:
            await self._set(
                keys=[self._prefix + namespace, f"{self._prefix}{namespace}:{key}"],
                args=[key, value, self._idle_ms, self._max, f"{self._prefix}{namespace}:"],
            )
        except RedisError as exc:
            raise _failure(exc) from exc

    async def aclose(self) -> None:
        try:
            await self._redis.aclose()
        except RedisError:  # closing a pool that never connected, or lost its server, is not a failure
            pass


def _failure(exc: RedisError) -> SessionStoreError:
    """Names the failure's kind only: Redis messages can carry host names, never worth a client's eyes."""
    return SessionStoreError(f"the session store (Redis) failed: {exc.__class__.__name__}")
