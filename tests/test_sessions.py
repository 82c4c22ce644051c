"""The session store (model scope), run alike against the in-memory backend and a real redis-server."""

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio

from proxy.redis_store import RedisStore
from proxy.sessions import MemoryStore, SessionStore, SessionStoreError, open_store
from tests.proxy_process import free_port
from tests.redis_server import RedisServer, running_redis

IDLE = 0.6  # seconds; Redis tests really wait, so short, yet with room for a slow machine's sleeps
NS, OTHER_NS = "a1b2c3d4", "e5f6a7b8"


@dataclass
class Backend:
    """Makes stores of one kind, and lets time pass for them (a fake clock, or real sleeping for Redis)."""

    name: str
    make: Callable[[int, float], SessionStore]
    advance: Callable[[float], Awaitable[None]]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        now = [1_000.0]

        async def advance(seconds: float) -> None:
            now[0] += seconds

        return Backend("memory", lambda bound, idle: MemoryStore(bound, idle, clock=lambda: now[0]), advance)
    url = request.getfixturevalue("redis_url")
    prefix = f"test-{uuid.uuid4().hex}:"  # one server for the module, a clean keyspace for each test
    return Backend("redis", lambda bound, idle: RedisStore(url, idle, bound, prefix=prefix), asyncio.sleep)


def run(
    backend: Backend,
    scenario: Callable[[SessionStore], Awaitable[None]],
    bound: int = 1_000,
    idle: float = 60,
) -> None:
    """One event loop per test, with the store made and closed inside it (Redis pools belong to a loop).

    The idle time is long unless a test is about expiry, so a slow machine cannot expire entries early.
    """

    async def main() -> None:
        store = backend.make(bound, idle)
        try:
            await scenario(store)
        finally:
            await store.aclose()

    asyncio.run(main())


async def present(store: SessionStore, keys: list[str], namespace: str = NS) -> list[str]:
    return [key for key in keys if await store.get(namespace, key) is not None]


def test_set_then_get(backend: Backend) -> None:
    """A value set is read back, overwritten by a later set; an unknown key is None."""

    async def scenario(store: SessionStore) -> None:
        assert await store.get(NS, "openai:default") is None
        await store.set(NS, "openai:default", "agent-1")
        assert await store.get(NS, "openai:default") == "agent-1"
        await store.set(NS, "openai:default", "agent-2")
        assert await store.get(NS, "openai:default") == "agent-2"
        assert await store.get(NS, "openai:alice") is None

    run(backend, scenario)


def test_namespaces_are_isolated(backend: Backend) -> None:
    """The same session key in two namespaces (two client keys) holds two values; neither sees the other."""

    async def scenario(store: SessionStore) -> None:
        await store.set(NS, "openai:bob", "agent-ns1")
        assert await store.get(OTHER_NS, "openai:bob") is None
        await store.set(OTHER_NS, "openai:bob", "agent-ns2")
        assert await store.get(NS, "openai:bob") == "agent-ns1"
        assert await store.get(OTHER_NS, "openai:bob") == "agent-ns2"

    run(backend, scenario)


def test_namespace_with_colon_is_refused(backend: Backend) -> None:
    """A namespace with ':' could alias another's Redis keys, so both backends refuse it."""

    async def scenario(store: SessionStore) -> None:
        with pytest.raises(ValueError):
            await store.set(f"{NS}:openai", "x", "agent-1")
        with pytest.raises(ValueError):
            await store.get("", "x")

    run(backend, scenario)


def test_idle_entries_expire(backend: Backend) -> None:
    """An entry unused for longer than the idle time is gone."""

    async def scenario(store: SessionStore) -> None:
        await store.set(NS, "openai:default", "agent-1")
        await backend.advance(IDLE + 0.2)
        assert await store.get(NS, "openai:default") is None

    run(backend, scenario, idle=IDLE)


def test_get_refreshes_idle_time(backend: Backend) -> None:
    """Expiry slides: an entry read within the idle time lives on, while an unread one set with it expires."""

    async def scenario(store: SessionStore) -> None:
        await store.set(NS, "read", "agent-1")
        await store.set(NS, "unread", "agent-2")
        await backend.advance(IDLE * 0.6)
        assert await store.get(NS, "read") == "agent-1"
        await backend.advance(IDLE * 0.6)  # 1.2 idle times since both were set
        assert await store.get(NS, "read") == "agent-1"
        assert await store.get(NS, "unread") is None
        await backend.advance(IDLE + 0.2)
        assert await store.get(NS, "read") is None

    run(backend, scenario, idle=IDLE)


def test_bound_evicts_least_recently_used(backend: Backend) -> None:
    """Over the bound, the least recently used entry goes first; a read counts as a use."""

    async def scenario(store: SessionStore) -> None:
        for i in range(5):
            await store.set(NS, f"k{i}", f"agent-{i}")
        assert await store.get(NS, "k0") == "agent-0"  # now k1 is the least recently used
        await store.set(NS, "k5", "agent-5")
        await store.set(NS, "k6", "agent-6")
        assert await present(store, [f"k{i}" for i in range(7)]) == ["k0", "k3", "k4", "k5", "k6"]

    run(backend, scenario, bound=5)


def test_bound_holds_for_many_distinct_keys(backend: Backend) -> None:
    """Endless distinct `user` values keep only the newest `bound` entries."""

    async def scenario(store: SessionStore) -> None:
        keys = [f"openai:user-{i}" for i in range(100)]
        for key in keys:
            await store.set(NS, key, "agent-1")
        assert await present(store, keys) == keys[-10:]

    run(backend, scenario, bound=10)


def test_concurrent_use_stays_consistent(backend: Backend) -> None:
    """Hundreds of concurrent sets and gets across namespaces read back exactly what was written."""

    async def scenario(store: SessionStore) -> None:
        pairs = [(f"ns{n}", f"openai:u{k}") for n in range(4) for k in range(50)]
        await asyncio.gather(*(store.set(ns, key, f"{ns}/{key}") for ns, key in pairs))
        got = await asyncio.gather(*(store.get(ns, key) for ns, key in pairs))
        assert got == [f"{ns}/{key}" for ns, key in pairs]
        racing = pairs[:50]  # read while being overwritten: each read sees the old value or the new one
        results = await asyncio.gather(
            *(store.get(ns, key) for ns, key in racing), *(store.set(ns, key, "new") for ns, key in racing)
        )
        for value, (ns, key) in zip(results[: len(racing)], racing, strict=True):
            assert value in ("new", f"{ns}/{key}")
        assert await asyncio.gather(*(store.get(ns, key) for ns, key in racing)) == ["new"] * len(racing)

    run(backend, scenario)


def test_concurrent_sets_keep_the_bound(backend: Backend) -> None:
    """Concurrent sets of distinct keys into one namespace leave exactly `bound` of them."""

    async def scenario(store: SessionStore) -> None:
        keys = [f"openai:u{i}" for i in range(150)]
        await asyncio.gather(*(store.set(NS, key, "agent-1") for key in keys))
        assert len(await present(store, keys)) == 20

    run(backend, scenario, bound=20)


def test_memory_100k_distinct_keys_stay_at_bound() -> None:
    """100,000 distinct keys leave the memory store at its bound, holding the newest ones."""

    async def scenario() -> None:
        store = MemoryStore(max_entries=1_000)
        for i in range(100_000):
            await store.set(NS, f"openai:user-{i}", "agent-1")
            assert len(store) <= 1_000
        assert len(store) == 1_000
        assert await store.get(NS, "openai:user-98999") is None
        assert await store.get(NS, "openai:user-99000") == "agent-1"

    asyncio.run(scenario())


def test_memory_drops_expired_entries_without_reading_them() -> None:
    """Expired entries are dropped by the next operation, not only when their own key is read."""

    async def scenario() -> None:
        now = [0.0]
        store = MemoryStore(max_entries=100, idle_seconds=10, clock=lambda: now[0])
        for i in range(50):
            await store.set(NS, f"k{i}", "agent-1")
        now[0] = 5.0
        await store.set(NS, "fresh", "agent-2")
        now[0] = 11.0
        await store.get(OTHER_NS, "anything")
        assert len(store) == 1
        assert await store.get(NS, "fresh") == "agent-2"

    asyncio.run(scenario())


def test_invalid_limits_are_refused() -> None:
    """A zero bound or idle time is a configuration mistake, refused at construction."""
    with pytest.raises(ValueError):
        MemoryStore(max_entries=0)
    with pytest.raises(ValueError):
        RedisStore("redis://127.0.0.1:1/0", idle_seconds=0)


def test_open_store_picks_the_backend() -> None:
    """No URL: the memory store; a URL: Redis (nothing connects until first use)."""
    assert isinstance(open_store(None, 10, 60), MemoryStore)
    store = open_store("redis://127.0.0.1:1/0", 10, 60)
    assert isinstance(store, RedisStore)
    asyncio.run(store.aclose())


def test_redis_replicas_share_the_state(redis_url: str) -> None:
    """Two stores on one Redis (two proxy replicas) see each other's sets and evictions."""

    async def scenario() -> None:
        prefix = f"test-{uuid.uuid4().hex}:"
        one, two = (RedisStore(redis_url, IDLE * 10, 3, prefix=prefix) for _ in range(2))
        try:
            await one.set(NS, "openai:default", "agent-1")
            assert await two.get(NS, "openai:default") == "agent-1"
            for i in range(3):
                await two.set(NS, f"k{i}", "agent-2")
            assert await one.get(NS, "openai:default") is None
        finally:
            await one.aclose()
            await two.aclose()

    asyncio.run(scenario())


def test_redis_evicted_and_stale_values_are_deleted(redis_url: str) -> None:
    """Eviction deletes the values themselves, and every key Redis holds for us carries an expiry."""

    async def scenario() -> None:
        prefix = f"test-{uuid.uuid4().hex}:"
        store = RedisStore(redis_url, idle_seconds=IDLE * 10, max_entries_per_namespace=5, prefix=prefix)
        raw = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:
            for i in range(50):
                await store.set(NS, f"openai:user-{i}", "agent-1")
            keys = sorted([key async for key in raw.scan_iter(match=f"{prefix}*")])
            assert keys == [prefix + NS] + [f"{prefix}{NS}:openai:user-{i}" for i in range(45, 50)]
            assert await raw.zcard(prefix + NS) == 5
            for key in keys:
                assert 0 < await raw.pttl(key) <= IDLE * 10 * 1000
        finally:
            await store.aclose()
            await raw.aclose()

    asyncio.run(scenario())


def test_redis_unreachable_raises_session_store_error() -> None:
    """Nothing listening: get and set raise SessionStoreError, quickly, not a raw redis error."""

    async def scenario() -> None:
        store = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(SessionStoreError, match="ConnectionError"):
                await store.get(NS, "openai:default")
            with pytest.raises(SessionStoreError):
                await store.set(NS, "openai:default", "agent-1")
            assert loop.time() - started < 2
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_redis_lost_mid_use_raises_session_store_error(tmp_path: Path) -> None:
    """A server that goes away after pooled connections exist also gives SessionStoreError."""

    async def scenario(server: RedisServer) -> None:
        store = RedisStore(server.url)
        try:
            await store.set(NS, "openai:default", "agent-1")
            server.stop()
            with pytest.raises(SessionStoreError):
                await store.get(NS, "openai:default")
        finally:
            await store.aclose()

    with running_redis(tmp_path) as server:
        asyncio.run(scenario(server))


def test_redis_index_forgets_expired_keys(redis_url: str) -> None:
    """In a namespace kept alive by new sets, the index drops keys that expired, so they hold no room."""

    async def scenario() -> None:
        prefix = f"test-{uuid.uuid4().hex}:"
        store = RedisStore(redis_url, idle_seconds=IDLE, max_entries_per_namespace=100, prefix=prefix)
        raw = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:
            for i in range(5):
                await store.set(NS, f"old-{i}", "agent-1")
            await asyncio.sleep(IDLE * 0.6)
            await store.set(NS, "middle", "agent-1")
            await asyncio.sleep(IDLE * 0.6)  # the old keys have expired, the index has not
            await store.set(NS, "new", "agent-1")
            assert sorted(await raw.zrange(prefix + NS, 0, -1)) == ["middle", "new"]
        finally:
            await store.aclose()
            await raw.aclose()

    asyncio.run(scenario())


def test_without_a_redis_url_redis_is_never_imported() -> None:
    """Its client costs memory (bench/README.md): only a deployment that uses Redis pays for it."""
    code = (
        "import sys; from proxy.sessions import open_store; import proxy.app; "
        "open_store(None, 10, 60); print('redis' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
