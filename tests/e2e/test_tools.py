"""End to end, the real openai SDK: client tools both ways, and no agent left waiting on a tool call.

The fake LLM behind Letta calls tool NAME for a user text `/call NAME {json}` when NAME is offered, and once
the result is in answers `Echo: <text> | NAME returned: <result>`, so an answer proves the result arrived.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from letta_client import Letta
from letta_client.types import AgentState
from openai.types.chat import ChatCompletionChunk

from tests.e2e.conftest import WEATHER
from tests.e2e.letta_history import user_texts
from tests.proxy_process import running_proxy

pytestmark = pytest.mark.slow


def _call(city: str) -> str:
    return f'/call get_weather {{"city": "{city}"}}'


def _assembled(chunks: list[ChatCompletionChunk]) -> tuple[str, list[dict[str, str]], str | None]:
    """Content, tool calls (by index, each opened by its id and name) and finish reason of a stream."""
    content, calls, finish = "", {}, None
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        finish = choice.finish_reason or finish
        for tc in choice.delta.tool_calls or []:
            if tc.index not in calls:
                assert tc.id and tc.function and tc.function.name, "a tool call must open with id and name"
                calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
            else:
                assert tc.id is None, "only the first fragment of a call carries its id"
            calls[tc.index]["arguments"] += (tc.function.arguments if tc.function else None) or ""
    return content, [calls[i] for i in sorted(calls)], finish


def test_client_tool_loop_sync(client: openai.OpenAI, agent: AgentState, letta: Letta):
    """The agent's call to a client tool is tool_calls/finish "tool_calls"; the tool message's result
    reaches the agent, whose answer quotes it."""
    messages: list[Any] = [{"role": "user", "content": _call("Paris")}]
    first = client.chat.completions.create(model=agent.name, messages=messages, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert (call.type, call.function.name) == ("function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_")

    messages += [choice.message, {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    second = client.chat.completions.create(model=agent.name, messages=messages, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop"
    text = second.choices[0].message.content or ""
    assert text.startswith(f"Echo: {_call('Paris')} | get_weather returned: ") and "sunny, 21 C" in text
    assert not second.choices[0].message.tool_calls
    assert user_texts(letta, agent.id).count(_call("Paris")) == 1


def test_client_tool_loop_streamed(client: openai.OpenAI, agent: AgentState):
    """Streamed: the call opens with id and name, its arguments follow in fragments; the result's answer
    streams back."""
    messages: list[Any] = [{"role": "user", "content": _call("Rome")}]
    chunks = list(
        client.chat.completions.create(model=agent.name, messages=messages, tools=[WEATHER], stream=True)
    )
    content, calls, finish = _assembled(chunks)
    assert finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("get_weather", {"city": "Rome"})]
    fragments = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert len(fragments) > 1, "the arguments were not streamed in fragments"

    call = calls[0]
    messages += [
        {
            "role": "assistant",
            "content": content or None,
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call["id"], "content": [{"type": "text", "text": "cloudy, 18 C"}]},
    ]
    answer = list(
        client.chat.completions.create(model=agent.name, messages=messages, tools=[WEATHER], stream=True)
    )
    text, more_calls, finish = _assembled(answer)
    assert (finish, more_calls) == ("stop", [])
    assert text.startswith(f"Echo: {_call('Rome')} | get_weather returned: ") and "cloudy, 18 C" in text


def test_tool_choice_none_offers_no_tool(client: openai.OpenAI, agent: AgentState):
    """tool_choice "none" keeps the client's tools from the agent: it answers without calling one."""
    resp = client.chat.completions.create(
        model=agent.name,
        messages=[{"role": "user", "content": _call("Oslo")}],
        tools=[WEATHER],
        tool_choice="none",
    )
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].message.content == f"Echo: {_call('Oslo')}"


def test_results_for_other_calls_are_a_400(client: openai.OpenAI, make_agent: Callable[[], AgentState]):
    """Tool results that do not answer the calls the agent waits on are the client's error, naming
    messages; the agent still waits, and takes the right result afterwards."""
    agent = make_agent()
    messages: list[Any] = [{"role": "user", "content": _call("Lima")}]
    first = client.chat.completions.create(model=agent.name, messages=messages, tools=[WEATHER])
    real = (first.choices[0].message.tool_calls or [])[0]
    wrong = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_not_pending", "type": "function", "function": real.function.model_dump()}
        ],
    }
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model=agent.name,
                messages=[
                    *messages,
                    wrong,
                    {"role": "tool", "tool_call_id": "call_not_pending", "content": "x"},
                ],
                tools=[WEATHER],
                stream=stream,
            )
        assert caught.value.body["param"] == "messages"  # type: ignore[index]
    right = client.chat.completions.create(
        model=agent.name,
        messages=[
            *messages,
            first.choices[0].message,
            {"role": "tool", "tool_call_id": real.id, "content": "dry"},
        ],
        tools=[WEATHER],
    )
    assert "get_weather returned:" in (right.choices[0].message.content or "")


@pytest.mark.parametrize("stream", [False, True], ids=["sync", "stream"])
def test_an_unanswered_client_tool_call_does_not_block_the_next_turn(
    client: openai.OpenAI, make_agent: Callable[[], AgentState], letta: Letta, stream: bool
):
    """A client that never answers a tool call can still talk on: the call is denied and the new turn is
    answered, sent to the agent once."""
    agent = make_agent()
    first = client.chat.completions.create(
        model=agent.name, messages=[{"role": "user", "content": _call("Kyiv")}], tools=[WEATHER]
    )
    assert first.choices[0].finish_reason == "tool_calls"
    text = f"never mind {uuid.uuid4().hex[:8]}"
    answer = _plain_turn(client, agent.name, text, stream)
    assert answer == f"Echo: {text}"
    assert user_texts(letta, agent.id).count(text) == 1


@pytest.fixture
def approving_agent(make_agent: Callable[[], AgentState], letta: Letta) -> AgentState:
    """An agent whose own conversation_search needs approval (the fake LLM calls it for `/tool ...`)."""
    agent = make_agent()
    letta.agents.tools.update_approval("conversation_search", agent_id=agent.id, body_requires_approval=True)
    return agent


@pytest.mark.parametrize("stream", [False, True], ids=["sync", "stream"])
def test_own_tool_needing_approval_is_denied_and_the_agent_goes_on(
    client: openai.OpenAI, approving_agent: AgentState, stream: bool
):
    """By default the proxy denies the agent's own call needing approval at once; the same answer goes on
    to the agent's reply, with no tool_calls and no wait left behind."""
    text = f"/tool approval {uuid.uuid4().hex[:8]}"
    assert _plain_turn(client, approving_agent.name, text, stream) == f"Echo: {text}"
    follow_up = f"after {uuid.uuid4().hex[:8]}"
    assert _plain_turn(client, approving_agent.name, follow_up, stream) == f"Echo: {follow_up}"


@pytest.mark.parametrize("stream", [False, True], ids=["sync", "stream"])
def test_an_agent_left_waiting_outside_the_proxy_takes_the_next_turn(
    client: openai.OpenAI, approving_agent: AgentState, letta: Letta, stream: bool
):
    """An agent that waits on an approval asked for elsewhere (straight through Letta) answers the next
    turn through the proxy, which denies the wait first."""
    waiting = letta.agents.messages.create(
        approving_agent.id, messages=[{"role": "user", "content": "/tool left waiting"}]
    )
    assert waiting.stop_reason.stop_reason == "requires_approval"
    text = f"moving on {uuid.uuid4().hex[:8]}"
    assert _plain_turn(client, approving_agent.name, text, stream) == f"Echo: {text}"
    assert user_texts(letta, approving_agent.id).count(text) == 1


def _plain_turn(client: openai.OpenAI, model: str, text: str, stream: bool) -> str:
    """One user turn without tools, its answer text; tool_calls in it fail the test."""
    messages: list[Any] = [{"role": "user", "content": text}]
    if not stream:
        resp = client.chat.completions.create(model=model, messages=messages)
        assert resp.choices[0].finish_reason == "stop" and not resp.choices[0].message.tool_calls
        return resp.choices[0].message.content or ""
    content, calls, finish = _assembled(
        list(client.chat.completions.create(model=model, messages=messages, stream=True))
    )
    assert (finish, calls) == ("stop", [])
    return content


@pytest.mark.parametrize("stream", [False, True], ids=["sync", "stream"])
def test_a_conversation_left_waiting_takes_the_next_turn(
    client: openai.OpenAI, make_agent: Callable[[], AgentState], stream: bool
):
    """Waits are per conversation: one pinned by a chat key is unblocked the same way, and its tool loop
    works as in the agent's default history."""
    agent = make_agent()
    chat = {"X-Letta-Chat-Key": f"chat-{uuid.uuid4().hex[:8]}"}
    messages: list[Any] = [{"role": "user", "content": _call("Cusco")}]
    first = client.chat.completions.create(
        model=agent.name, messages=messages, tools=[WEATHER], extra_headers=chat
    )
    (call,) = first.choices[0].message.tool_calls or []
    messages += [first.choices[0].message, {"role": "tool", "tool_call_id": call.id, "content": "thin air"}]
    done = client.chat.completions.create(
        model=agent.name, messages=messages, tools=[WEATHER], extra_headers=chat
    )
    assert "thin air" in (done.choices[0].message.content or "")

    client.chat.completions.create(
        model=agent.name,
        messages=[{"role": "user", "content": _call("Tromso")}],
        tools=[WEATHER],
        extra_headers=chat,
    )
    text = f"forget it {uuid.uuid4().hex[:8]}"
    answer = client.with_options(default_headers=chat)
    assert _plain_turn(answer, agent.name, text, stream) == f"Echo: {text}"


@pytest.mark.parametrize("verdict", ["approve", "not now"])
def test_in_client_mode_the_client_approves_or_denies_the_agents_own_tool(
    letta_url: str, api_key: str, approving_agent: AgentState, letta: Letta, tmp_path: Path, verdict: str
):
    """PROXY_TOOL_APPROVALS=client: the agent's own call needing approval is a tool call for the client,
    whose tool message approves it (Letta runs the tool) or denies it (with the client's reason)."""
    with running_proxy(tmp_path, api_key, LETTA_BASE_URL=letta_url, PROXY_TOOL_APPROVALS="client") as proxy:
        client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=api_key, max_retries=0, timeout=120)
        messages: list[Any] = [{"role": "user", "content": "/tool asking first"}]
        first = client.chat.completions.create(model=approving_agent.name, messages=messages)
        assert first.choices[0].finish_reason == "tool_calls"
        (call,) = first.choices[0].message.tool_calls or []
        assert call.function.name == "conversation_search"
        messages += [first.choices[0].message, {"role": "tool", "tool_call_id": call.id, "content": verdict}]
        answer = client.chat.completions.create(model=approving_agent.name, messages=messages)
    assert answer.choices[0].message.content == "Echo: /tool asking first"
    (ran,) = [
        m
        for m in letta.agents.messages.list(approving_agent.id, limit=50)
        if m.message_type == "tool_return_message" and m.tool_call_id == call.id
    ]
    assert ran.status == ("success" if verdict == "approve" else "error")
    assert (verdict in str(ran.tool_return)) == (verdict != "approve")
