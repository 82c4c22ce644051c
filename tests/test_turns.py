"""turns.py: one turn at a time per agent, in arrival order, with a bounded wait."""

import asyncio

import pytest

from proxy.errors import ProxyError
from proxy.turns import TurnQueue


def test_turns_for_one_agent_run_one_at_a_time_in_arrival_order() -> None:
    """Ten turns for the same agent never overlap and start in the order they arrived."""
    order: list[int] = []
    running = 0

    async def turn(queue: TurnQueue, n: int) -> None:
        nonlocal running
        release = await queue.enter("agent-1")
        try:
            running += 1
            assert running == 1
            order.append(n)
            await asyncio.sleep(0.01)
        finally:
            running -= 1
            release()

    async def main() -> TurnQueue:
        queue = TurnQueue(timeout=5)
        tasks = []
        for n in range(10):
            tasks.append(asyncio.create_task(turn(queue, n)))
            await asyncio.sleep(0)  # each arrives after the previous one
        await asyncio.gather(*tasks)
        return queue

    queue = asyncio.run(main())
    assert order == list(range(10))
    assert (queue.holding, queue.waiting) == (0, 0)
    assert not queue._lines  # nothing is kept for an idle agent


def test_different_agents_run_in_parallel() -> None:
    """A busy agent does not hold up another one."""

    async def main() -> bool:
        queue = TurnQueue(timeout=5)
        release_a = await queue.enter("agent-a")
        release_b = await asyncio.wait_for(queue.enter("agent-b"), 1)
        release_a()
        release_b()
        return True

    assert asyncio.run(main())


def test_a_turn_waiting_too_long_is_a_429_with_retry_after() -> None:
    """Past PROXY_QUEUE_TIMEOUT the client is told to come back, and leaves the queue."""

    async def main() -> tuple[ProxyError, tuple[int, int]]:
        queue = TurnQueue(timeout=0.05)
        release = await queue.enter("agent-1")
        with pytest.raises(ProxyError) as caught:
            await queue.enter("agent-1")
        counts = (queue.holding, queue.waiting)
        release()
        return caught.value, counts

    error, counts = asyncio.run(main())
    assert (error.status, error.code, error.headers) == (429, "agent_busy", {"Retry-After": "1"})
    assert counts == (1, 0)  # the turn that timed out waits no more


def test_a_cancelled_wait_leaves_the_queue_and_release_is_idempotent() -> None:
    """A client gone while queued frees its place; ending a turn twice changes nothing."""

    async def main() -> list[tuple[int, int]]:
        queue = TurnQueue(timeout=5)
        release = await queue.enter("agent-1")
        waiter = asyncio.create_task(queue.enter("agent-1"))
        await asyncio.sleep(0.01)
        counts = [(queue.holding, queue.waiting)]
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        release()
        release()
        again = await asyncio.wait_for(queue.enter("agent-1"), 1)
        counts.append((queue.holding, queue.waiting))
        again()
        again()
        return [*counts, (queue.holding, queue.waiting, len(queue._lines))]

    assert asyncio.run(main()) == [(1, 1), (1, 0), (0, 0, 0)]
