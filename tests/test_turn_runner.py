"""turn_runner.py: one turn whatever the API, through chat completions with a mocked Letta: a client that
leaves while its turn is queued never reaches Letta; one that leaves while Letta works gets its run
cancelled while the proxy still holds the agent."""

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
from proxy.letta import Letta
from proxy.sessions import MemoryStore
from proxy.turn_runner import TurnRunner
from proxy.turns import TurnQueue
from tests.conftest import AGENT, make_settings


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
        choice = AgentChoice(letta, MemoryStore(), "request", None)
        chat = Chat(TurnRunner(letta, choice, turns, settings), choice, settings)
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
