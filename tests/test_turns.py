"""turns.py: one turn at a time per agent, in arrival order, with a bounded wait."""

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import respx

from proxy.agent_choice import AgentChoice
from proxy.auth import Client
from proxy.chat.protocol import ChatCompletionRequest
from proxy.chat.serving import Chat
from proxy.disconnect import ClientGone, ClientWatch
from proxy.errors import ProxyError
from proxy.letta import Letta
from proxy.sessions import MemoryStore
from proxy.turns import TurnQueue
from tests.conftest import AGENT, make_settings


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


# --- clients that leave (serving.py with a mocked Letta) -----------------------------------------


class Leaving:
    """A request's receive channel whose client leaves after `seconds`."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    async def receive(self) -> dict[str, Any]:
        await asyncio.sleep(self._seconds)
        return {"type": "http.disconnect"}


def serve_leaving(tmp_path: Path, scenario: Callable[[Chat, TurnQueue], Awaitable[None]]) -> None:
    async def main() -> None:
        settings = make_settings(tmp_path)
        letta = Letta(settings)
        turns = TurnQueue(timeout=5)
        chat = Chat(letta, AgentChoice(letta, MemoryStore(), "request", None), turns, settings)
        try:
            await asyncio.wait_for(scenario(chat, turns), 5)
        finally:
            await letta.aclose()

    asyncio.run(main())


async def leave_during(chat: Chat, seconds: float, stream: bool = False) -> None:
    body = {"messages": [{"role": "user", "content": "hello"}], "model": AGENT["name"], "stream": stream}
    async with ClientWatch(Leaving(seconds).receive) as watch:
        with pytest.raises(ClientGone):
            await chat.serve(Client(b"key"), msgspec.convert(body, ChatCompletionRequest), {}, watch)


def test_a_turn_whose_client_leaves_while_queued_never_reaches_letta(
    tmp_path: Path, letta: respx.MockRouter
) -> None:
    """It leaves the queue at once; the turn ahead of it is undisturbed."""

    async def scenario(chat: Chat, turns: TurnQueue) -> None:
        release = await turns.enter(AGENT["id"])
        await leave_during(chat, 0.05)
        assert (turns.holding, turns.waiting) == (1, 0)  # only the turn that holds the agent
        release()

    serve_leaving(tmp_path, scenario)
    assert not letta["send"].called


@pytest.mark.parametrize("stream", [False, True])
def test_a_turn_whose_client_leaves_while_letta_works_is_cancelled_before_the_agent_is_free(
    tmp_path: Path, letta: respx.MockRouter, stream: bool
) -> None:
    """A whole turn, or a stream not yet started: its run is cancelled while the proxy holds the agent."""
    held_at_cancel: list[int] = []

    async def slow_letta(_: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        return httpx.Response(500)

    def cancel(_: httpx.Request) -> httpx.Response:
        held_at_cancel.append(turns_seen[0].holding)
        return httpx.Response(200, json={})

    turns_seen: list[TurnQueue] = []
    letta["send"].mock(side_effect=slow_letta)
    running = {"id": "run-1", "agent_id": AGENT["id"], "conversation_id": None, "status": "created"}
    letta.get("/v1/runs/").mock(return_value=httpx.Response(200, json=[running]))
    letta.post(f"/v1/agents/{AGENT['id']}/messages/cancel", name="cancel").mock(side_effect=cancel)

    async def scenario(chat: Chat, turns: TurnQueue) -> None:
        turns_seen.append(turns)
        await leave_during(chat, 0.1, stream)
        assert (turns.holding, turns.waiting) == (0, 0)

    serve_leaving(tmp_path, scenario)
    assert held_at_cancel == [1]
    assert json.loads(letta["cancel"].calls.last.request.content) == {"run_ids": ["run-1"]}
