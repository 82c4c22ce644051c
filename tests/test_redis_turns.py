"""redis_turns.py against a real redis-server: one holder per key across "processes" (separate clients),
arrival order, a bounded wait, a cancelled waiter leaving the queue, a dead holder's lease lapsing, and
Redis lost (a 503 for a waiting turn, never a hang)."""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio

from proxy.errors import ProxyError
from proxy.redis_store import connect
from proxy.redis_turns import RedisTurns
from tests.redis_server import running_redis

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


def run(url: str, scenario: Callable[[Callable[..., RedisTurns]], Awaitable[None]]) -> None:
    """Runs `scenario` with a factory of queues, each on its own client as a separate process would be."""
    prefix = f"test-{uuid.uuid4().hex}:"

    async def main() -> None:
        made: list[tuple[RedisTurns, redis.asyncio.Redis]] = []

        def queue(timeout: float = 5, lease: float = 3) -> RedisTurns:
            client = connect(url)
            turns = RedisTurns(client, timeout, lease, prefix=prefix)
            made.append((turns, client))
            return turns

        await queue().start()  # as the app's start-up does: a fresh Redis needs no grace
        try:
            async with asyncio.timeout(30):  # a broken lock must fail the test, not hang it
                await scenario(queue)
        finally:
            for turns, client in made:
                await turns.aclose()
                await client.aclose()

    asyncio.run(main())


def test_turns_across_processes_run_one_at_a_time_in_arrival_order(redis_url: str) -> None:
    """Twelve turns for one key, spread over three queues (three processes), never overlap and are
    granted in the order they reached Redis."""
    order: list[int] = []
    running = 0

    async def scenario(queue: Callable[..., RedisTurns]) -> None:
        queues = [queue() for _ in range(3)]

        async def turn(n: int) -> None:
            nonlocal running
            release = await queues[n % 3].enter("agent-1")
            running += 1
            assert running == 1
            order.append(n)
            await asyncio.sleep(0.01)
            running -= 1
            release()

        gate = await queue().enter("agent-1")  # held until all twelve wait, so each one's place is known
        raw = redis.asyncio.Redis.from_url(redis_url)
        queue_key = f"{queues[0]._prefix}agent-1:queue"
        tasks = []
        for n in range(12):
            tasks.append(asyncio.create_task(turn(n)))
            while await raw.zcard(queue_key) < n + 2:  # each reaches Redis after the previous one
                await asyncio.sleep(0.001)
        gate()
        await asyncio.gather(*tasks)
        await raw.aclose()

    run(redis_url, scenario)
    assert order == list(range(12))


def test_different_keys_do_not_wait_for_each_other(redis_url: str) -> None:
    """A held key does not hold up another one."""

    async def scenario(queue: Callable[..., RedisTurns]) -> None:
        one, two = queue(timeout=0.5), queue(timeout=0.5)
        await one.enter("agent-1")
        release = await two.enter("agent-2")
        release()

    run(redis_url, scenario)


def test_a_turn_waits_bounded_then_429(redis_url: str) -> None:
    """A key held elsewhere beyond PROXY_QUEUE_TIMEOUT: a 429 agent_busy with Retry-After."""

    async def scenario(queue: Callable[..., RedisTurns]) -> None:
        await queue().enter("agent-1")
        with pytest.raises(ProxyError) as caught:
            await queue(timeout=0.3).enter("agent-1")
        assert (caught.value.status, caught.value.code) == (429, "agent_busy")
        assert caught.value.headers == {"Retry-After": "1"}

    run(redis_url, scenario)


def test_a_cancelled_waiter_leaves_the_queue(redis_url: str) -> None:
    """A waiter whose client left (its enter cancelled) is out of the queue: the next one is granted
    straight after the holder, not after a lease."""

    async def scenario(queue: Callable[..., RedisTurns]) -> None:
        holder, other = queue(lease=30), queue(lease=30)
        release = await holder.enter("agent-1")
        gone = asyncio.create_task(other.enter("agent-1"))
        await asyncio.sleep(0.1)
        gone.cancel()
        await asyncio.sleep(0.05)
        release()
        started = time.monotonic()
        (await holder.enter("agent-1"))()
        assert time.monotonic() - started < 1

    run(redis_url, scenario)


def test_a_live_holder_keeps_the_key_beyond_its_lease(redis_url: str) -> None:
    """The holder renews its lease: a turn longer than the lease is not overtaken."""

    async def scenario(queue: Callable[..., RedisTurns]) -> None:
        await queue(lease=1).enter("agent-1")
        with pytest.raises(ProxyError):
            await queue(timeout=2.5, lease=1).enter("agent-1")

    run(redis_url, scenario)


def test_a_dead_holders_lease_lapses(redis_url: str) -> None:
    """A holder that stops renewing (its process died) frees the key within about one lease."""

    async def scenario(queue: Callable[..., RedisTurns]) -> None:
        dead = queue(lease=1)
        await dead.enter("agent-1")
        for task in asyncio.all_tasks():  # the renewal dies as a killed process's would
            if task.get_coro().__qualname__.startswith("RedisTurns._renew"):  # type: ignore[union-attr]
                task.cancel()
        started = time.monotonic()
        (await queue(timeout=5, lease=1).enter("agent-1"))()
        assert 0.5 < time.monotonic() - started < 2

    run(redis_url, scenario)


def test_redis_lost_gives_a_clear_503(tmp_path: Path) -> None:
    """Redis gone: a turn that is not granted gets a 503 lock_unavailable quickly, never a hang."""

    async def main(url: str, stop: Callable[[], None]) -> None:
        client = connect(url)
        turns = RedisTurns(client, 30, 3)
        (await turns.enter("agent-1"))()
        stop()
        started = time.monotonic()
        with pytest.raises(ProxyError) as caught:
            await turns.enter("agent-1")
        assert (caught.value.status, caught.value.code) == (503, "lock_unavailable")
        assert time.monotonic() - started < 10
        await turns.aclose()
        await client.aclose()

    with running_redis(tmp_path) as server:
        asyncio.run(main(server.url, server.stop))


def test_after_redis_lost_its_state_a_holder_keeps_its_key(tmp_path: Path) -> None:
    """Redis's state wiped mid-turn (as a restart without persistence does): nobody is granted the key
    while its holder still renews it."""

    async def main(url: str) -> None:
        prefix = "wipe:"
        one, two = connect(url), connect(url)
        holder = RedisTurns(one, 30, 1, prefix=prefix)
        await holder.start()
        await holder.enter("agent-1")
        await one.flushall()
        with pytest.raises(ProxyError) as caught:
            await RedisTurns(two, 2, 1, prefix=prefix).enter("agent-1")
        assert caught.value.status == 429
        for client in (one, two):
            await client.aclose()

    with running_redis(tmp_path) as server:
        asyncio.run(main(server.url))
