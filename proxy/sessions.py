"""Which agent a tenant (or one of its sessions) last named, for requests that name none ("model scope").

State is namespaced by a digest of the client's key, so one tenant can never read or steer another's,
and bounded in count and idle time, so endless distinct `user` values cannot grow it without limit.
Two backends behave alike: `MemoryStore` here (one process) and `proxy.redis_store.RedisStore` (replicas
share the state).
"""

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol


class SessionStoreError(Exception):
    """The shared store failed (Redis down, timed out, refused us): the request should get a 503."""


class SessionStore(Protocol):
    async def get(self, namespace: str, key: str) -> str | None: ...
    async def set(self, namespace: str, key: str, value: str) -> None: ...
    async def aclose(self) -> None: ...


def check_limits(max_entries: int, idle_seconds: float) -> None:
    if max_entries < 1 or not idle_seconds > 0:
        raise ValueError("max_entries must be >= 1 and idle_seconds > 0")


def check_namespace(namespace: str) -> None:
    """The same rule for both backends: a colon in a namespace would blur Redis key boundaries."""
    if not namespace or ":" in namespace:
        raise ValueError("a session namespace must be non-empty and contain no ':'")


class MemoryStore:
    """An LRU in one OrderedDict, oldest use first; entries expire lazily, so no background task.

    Because the order is also the order of last use, expired entries gather at the front and each
    operation drops them from there: amortised O(1), and idle entries do not linger until evicted.
    The bound is over all namespaces together.
    """

    def __init__(
        self,
        max_entries: int = 10_000,
        idle_seconds: float = 86_400,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_limits(max_entries, idle_seconds)
        self._max = max_entries
        self._idle = idle_seconds
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self, now: float) -> None:
        while self._entries:
            _, (_, used) = next(iter(self._entries.items()))
            if now - used <= self._idle:
                return
            self._entries.popitem(last=False)

    async def get(self, namespace: str, key: str) -> str | None:
        check_namespace(namespace)
        now = self._clock()
        self._expire(now)
        entry = self._entries.get((namespace, key))
        if entry is None:
            return None
        self._entries[(namespace, key)] = (entry[0], now)
        self._entries.move_to_end((namespace, key))
        return entry[0]

    async def set(self, namespace: str, key: str, value: str) -> None:
        check_namespace(namespace)
        now = self._clock()
        self._expire(now)
        self._entries[(namespace, key)] = (value, now)
        self._entries.move_to_end((namespace, key))
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def aclose(self) -> None:
        self._entries.clear()


def open_store(redis_url: str | None, max_entries: int, idle_seconds: float) -> SessionStore:
    """Redis when a URL is configured (the bound then applies per namespace), else in memory.

    Redis's client is imported only then: its memory is paid only where it is used (bench/README.md).
    """
    if redis_url:
        from proxy.redis_store import RedisStore

        return RedisStore(redis_url, idle_seconds=idle_seconds, max_entries_per_namespace=max_entries)
    return MemoryStore(max_entries=max_entries, idle_seconds=idle_seconds)
