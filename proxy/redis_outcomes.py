"""Idempotency-Key outcomes in Redis, shared by workers and replicas: see `proxy.idempotency`.

Per key a hash (fingerprint, owner, state) and a list of parts. Each script runs atomically, so two
replicas claiming one key at once get one "mine" and one "theirs". A running outcome lives one lease
(PROXY_LOCK_LEASE_SECONDS), renewed by its owner's heartbeat and by every part it keeps, so the outcome
of a process that died vanishes within a lease and a repeat waiting for it runs instead; a finished one
lives the window, a failed one `FAILED_LINGER` (for repeats replaying it), and a new claim replaces it.
Repeats poll for new parts every `POLL` seconds: Redis pushes nothing here.
"""

import asyncio

import redis.asyncio
from redis.exceptions import RedisError

from proxy.idempotency import Claim, State
from proxy.outcomes import FAILED_LINGER
from proxy.sessions import SessionStoreError

POLL = 0.01

# KEYS: the hash, the parts. ARGV: fingerprint, owner, lease ms.
_CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if state and state ~= 'failed' then
  if redis.call('HGET', KEYS[1], 'fp') == ARGV[1] then return 'theirs' end
  return 'conflict'
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'owner', ARGV[2], 'state', 'running')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 'mine'
"""

# KEYS: the hash, the parts. ARGV: owner, ms to live, state ('' keeps it), part ('' adds none).
_UPDATE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
if ARGV[4] ~= '' then redis.call('RPUSH', KEYS[2], ARGV[4]) end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'state', ARGV[3]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS: the hash, the parts. ARGV: first part wanted. Returns {state, part, part...} or {}.
_READ = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {} end
local parts = redis.call('LRANGE', KEYS[2], ARGV[1], -1)
table.insert(parts, 1, state)
return parts
"""


class RedisOutcomes:
    def __init__(
        self,
        client: redis.asyncio.Redis,
        window_seconds: float,
        lease_seconds: float,
        prefix: str = "letta-openai-proxy:idempotency:",
    ) -> None:
        self._window_ms = max(1, round(window_seconds * 1000))
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._prefix = prefix
        self._claim = client.register_script(_CLAIM)
        self._update = client.register_script(_UPDATE)
        self._read = client.register_script(_READ)

    def _keys(self, key: str) -> list[str]:
        return [self._prefix + key, self._prefix + key + ":parts"]

    async def claim(self, key: str, fingerprint: str, owner: str) -> Claim:
        try:
            claim = await self._claim(keys=self._keys(key), args=[fingerprint, owner, self._lease_ms])
        except RedisError as exc:
            raise _failure(exc) from exc
        return claim  # type: ignore[no-any-return]

    async def append(self, key: str, owner: str, part: str) -> None:
        await self._call_update(key, owner, self._lease_ms, "", part)

    async def finish(self, key: str, owner: str, kept: bool) -> None:
        ttl = self._window_ms if kept else round(FAILED_LINGER * 1000)
        await self._call_update(key, owner, ttl, "done" if kept else "failed", "")

    async def heartbeat(self, key: str, owner: str) -> None:
        await self._call_update(key, owner, self._lease_ms, "", "")

    async def _call_update(self, key: str, owner: str, ttl_ms: int, state: str, part: str) -> None:
        try:
            await self._update(keys=self._keys(key), args=[owner, ttl_ms, state, part])
        except RedisError as exc:
            raise _failure(exc) from exc

    async def read(self, key: str, start: int) -> tuple[list[str], State] | None:
        try:
            found = await self._read(keys=self._keys(key), args=[start])
        except RedisError as exc:
            raise _failure(exc) from exc
        if not found:
            return None
        return found[1:], found[0]

    async def wait(self, key: str, seen: int) -> None:
        await asyncio.sleep(POLL)


def _failure(exc: RedisError) -> SessionStoreError:
    return SessionStoreError(f"Redis failed: {exc.__class__.__name__}")
