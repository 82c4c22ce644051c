"""End to end: LangChain's ChatOpenAI with `bind_tools`, the usual agent loop, through the proxy (a real
process) to a real Letta: the agent calls the client's tool, LangChain runs it, the answer quotes it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from letta_client.types import AgentState

pytestmark = pytest.mark.slow

langchain_openai = pytest.importorskip("langchain_openai", reason="langchain-openai is in the dev group")
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"windy in {city}, 12 C"


def _model(proxy_url: str, api_key: str, agent: AgentState) -> Any:
    chat = langchain_openai.ChatOpenAI(
        model=agent.name, base_url=f"{proxy_url}/v1", api_key=api_key, max_retries=0, timeout=120
    )
    return chat.bind_tools([get_weather])


def _loop(model: Any, text: str, stream: bool) -> tuple[list[BaseMessage], AIMessage]:
    """LangChain's tool loop: ask, run every tool call, send the results, until an answer without calls."""
    messages: list[BaseMessage] = [HumanMessage(text)]
    for _ in range(3):
        if stream:
            reply: Any = None
            for chunk in model.stream(messages):
                reply = chunk if reply is None else reply + chunk
        else:
            reply = model.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            return messages, reply
        messages += [get_weather.invoke(call) for call in reply.tool_calls]
    raise AssertionError(f"the loop did not end: {messages!r}")


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_bind_tools_loop(proxy_url: str, api_key: str, agent: AgentState, stream: bool):
    """One tool call by the agent, run by LangChain, then the agent's answer quoting its result."""
    city = f"Bergen-{uuid.uuid4().hex[:6]}"
    text = f'/call get_weather {{"city": "{city}"}}'
    messages, answer = _loop(_model(proxy_url, api_key, agent), text, stream)
    asked = messages[1]
    assert isinstance(asked, AIMessage) and [c["name"] for c in asked.tool_calls] == ["get_weather"]
    assert asked.tool_calls[0]["args"] == {"city": city}
    assert asked.response_metadata.get("finish_reason") == "tool_calls"
    assert isinstance(answer.content, str)
    assert answer.content.startswith(f"Echo: {text} | get_weather returned: ")
    assert f"windy in {city}, 12 C" in answer.content


def test_the_agents_own_tool_call_is_not_a_tool_call(proxy_url: str, api_key: str, agent: AgentState):
    """With tools bound, the agent's own conversation_search (Letta ran it) never asks LangChain to run it."""
    messages, answer = _loop(_model(proxy_url, api_key, agent), "/tool langchain", stream=False)
    assert len(messages) == 2 and answer.content == "Echo: /tool langchain"
