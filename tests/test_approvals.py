"""approvals.py: one answer across Letta's waits, against a stand-in Letta that replays real captures.

The stand-in records every request, so the tests can check what was sent, how often, and in which order:
above all that a user's turn reaches the agent once, and only with what unblocks it.
"""

import asyncio
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from proxy.approvals import MAX_ROUNDS, Approvals, TurnInput
from proxy.errors import ProxyError
from proxy.letta import Agent, Letta
from proxy.letta.wire import LettaMessage, LettaResponse, SSEDecoder, decode_turn
from proxy.tools import MOVED_ON, NO_APPROVER, ToolResult
from tests.letta_captures import raw, turn

AGENT = Agent("agent-1", "bot", 0, "letta_v1_agent")
USER = {"role": "user", "content": "something else"}
WEATHER = [{"name": "get_weather"}]


def refusal() -> ProxyError:
    """Letta's 409 PENDING_APPROVAL, as proxy/letta/ reports it."""
    return ProxyError(409, "The agent is waiting for the approval of a tool call.", code="pending_approval")


OWN_WAIT = next(m for m in turn("send_approval.json") if m.message_type == "approval_request_message")


@dataclass
class StandIn:
    """Letta's side: each request takes the next scripted answer (a capture's name, or an error)."""

    answers: list[str | BaseException]
    waiting: LettaMessage | None = None  # what `last_message` finds
    sent: list[list[Any]] = field(default_factory=list)
    tools: list[Any] = field(default_factory=list)

    def _next(self, messages: Any, client_tools: Any) -> str:
        self.sent.append(list(messages))
        self.tools.append(client_tools)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def send(self, agent: Agent, messages: Any, client_tools: Any = None) -> LettaResponse:
        return decode_turn(raw(self._next(messages, client_tools)))

    async def stream(
        self, agent: Agent, messages: Any, on_close: Callable[[], None], conversation: Any, client_tools: Any
    ) -> AsyncGenerator[LettaMessage, None]:
        capture = raw(self._next(messages, client_tools))

        async def events() -> AsyncGenerator[LettaMessage, None]:
            try:
                for message in SSEDecoder().feed(capture):  # raises at an `event: error`, as Letta's does
                    yield message
            finally:
                on_close()

        return events()

    async def last_message(self, agent: Agent, conversation: str | None) -> LettaMessage | None:
        return self.waiting


def approvals(letta: StandIn, mode: str = "deny") -> Approvals:
    return Approvals(cast(Letta, letta), mode)  # type: ignore[arg-type]


def streamed(letta: StandIn, turn_input: TurnInput, mode: str = "deny") -> tuple[list[LettaMessage], int]:
    """All events of a streamed answer, and how often its close hook ran."""
    closed = 0

    def close() -> None:
        nonlocal closed
        closed += 1

    async def run() -> list[LettaMessage]:
        chain = await approvals(letta, mode).stream(turn_input, close)
        return [event async for event in chain]

    return asyncio.run(run()), closed


def stops(events: list[LettaMessage]) -> list[str | None]:
    return [e.stop_reason for e in events if e.message_type == "stop_reason"]


def test_a_plain_turn_is_one_request() -> None:
    """Nothing pending, nothing extra: the user's turn, once, with the client's tools."""
    letta = StandIn(["stream_tokens.sse"])
    events, closed = streamed(letta, TurnInput(AGENT, [USER], client_tools=WEATHER))
    assert letta.sent == [[USER]] and letta.tools == [WEATHER]
    assert stops(events) == ["end_turn"] and closed == 1


def test_a_whole_turn_refused_for_a_pending_call_is_sent_again_after_a_denial() -> None:
    """Letta's 409: the pending call is denied (the user moved on) in the same request as the turn."""
    letta = StandIn([refusal(), "send_message.json"], waiting=OWN_WAIT)
    events = asyncio.run(approvals(letta).send(TurnInput(AGENT, [USER])))
    denial = {
        "type": "approval",
        "approvals": [
            {
                "type": "approval",
                "tool_call_id": "call_8ce62fe16c9b448f9a25",
                "approve": False,
                "reason": MOVED_ON,
            }
        ],
    }
    assert letta.sent == [[USER], [denial, USER]]
    assert stops(events) == ["end_turn"]


def test_a_stream_refused_for_a_pending_call_goes_on_in_the_same_answer() -> None:
    """Letta refuses in the stream (a failed stop, then its error): the client sees only the next try."""
    letta = StandIn(["stream_pending_approval.sse", "stream_deny_and_user.sse"], waiting=OWN_WAIT)
    events, closed = streamed(letta, TurnInput(AGENT, [USER]))
    assert [m[0]["type"] for m in letta.sent[1:]] == ["approval"] and letta.sent[1][1] == USER
    assert letta.sent[1][0]["approvals"][0]["reason"] == MOVED_ON
    assert stops(events) == ["end_turn"] and closed == 1
    assert (
        "".join(e.content for e in events if e.message_type == "assistant_message") == "Echo: something else"
    )


def test_a_failure_that_is_not_a_refusal_is_told_and_never_resent() -> None:
    """A failed stream with nothing pending is the failure it was: no second request."""
    letta = StandIn(["stream_pending_approval.sse"], waiting=None)
    seen: list[LettaMessage] = []

    async def run() -> None:
        async for event in await approvals(letta).stream(TurnInput(AGENT, [USER]), lambda: None):
            seen.append(event)

    with pytest.raises(ProxyError):
        asyncio.run(run())
    assert len(letta.sent) == 1 and stops(seen) == ["error"]


def test_a_refusal_is_answered_once() -> None:
    """Refused again after the denial: the second refusal is the answer, not a loop."""
    letta = StandIn([refusal(), refusal()], waiting=OWN_WAIT)
    with pytest.raises(ProxyError):
        asyncio.run(approvals(letta).send(TurnInput(AGENT, [USER])))
    assert len(letta.sent) == 2


def test_an_own_tool_waiting_for_approval_is_denied_and_the_agent_goes_on() -> None:
    """`deny` mode: the wait's stop is not passed on; a denial goes out and the answer continues."""
    letta = StandIn(["stream_own_approval.sse", "stream_deny_and_user.sse"])
    events, closed = streamed(letta, TurnInput(AGENT, [USER]))
    (denial,) = letta.sent[1]
    assert denial == {
        "type": "approval",
        "approvals": [
            {
                "type": "approval",
                "tool_call_id": "call_5db9c660916e4efcb0e8",
                "approve": False,
                "reason": NO_APPROVER,
            }
        ],
    }
    assert stops(events) == ["end_turn"] and closed == 1
    assert [e.message_type for e in events].count("usage_statistics") == 2


def test_in_client_mode_an_own_tool_wait_ends_the_answer() -> None:
    """`client` mode: the wait is the client's to answer; nothing more is sent."""
    letta = StandIn(["stream_own_approval.sse"])
    events, _ = streamed(letta, TurnInput(AGENT, [USER]), mode="client")
    assert len(letta.sent) == 1 and stops(events) == ["requires_approval"]


def test_a_client_tool_wait_ends_the_answer() -> None:
    """A call to the client's tool is the client's to run: the answer stops there."""
    letta = StandIn(["stream_approval.sse"])
    events, _ = streamed(letta, TurnInput(AGENT, [USER], client_tools=WEATHER))
    assert len(letta.sent) == 1 and stops(events) == ["requires_approval"]


def test_a_model_that_keeps_asking_is_stopped_after_a_few_rounds() -> None:
    """Each round denied, the answer ends after MAX_ROUNDS requests, waiting."""
    letta = StandIn(["send_approval.json"] * MAX_ROUNDS)
    events = asyncio.run(approvals(letta).send(TurnInput(AGENT, [USER])))
    assert len(letta.sent) == MAX_ROUNDS and stops(events) == ["requires_approval"]
    assert all(m[0]["approvals"][0]["reason"] == NO_APPROVER for m in letta.sent[1:])


def test_tool_results_answer_what_the_agent_waits_on_first() -> None:
    """The results are looked up against the pending calls and go before any user turn."""
    letta = StandIn(["send_tool_return.json"], waiting=OWN_WAIT)
    result = ToolResult("call_8ce62fe16c9b448f9a25", "sunny")
    asyncio.run(approvals(letta).send(TurnInput(AGENT, [USER], [result], WEATHER)))
    assert letta.sent == [
        [
            {
                "type": "tool_return",
                "tool_returns": [
                    {
                        "type": "tool",
                        "tool_call_id": result.call_id,
                        "status": "success",
                        "tool_return": "sunny",
                    }
                ],
            },
            USER,
        ]
    ]


def test_tool_results_with_nothing_pending_are_a_400_and_nothing_is_sent() -> None:
    letta = StandIn(["send_tool_return.json"], waiting=None)
    with pytest.raises(ProxyError) as caught:
        asyncio.run(approvals(letta).send(TurnInput(AGENT, [], [ToolResult("call_x", "1")], WEATHER)))
    assert (caught.value.status, caught.value.param, letta.sent) == (400, "messages", [])
