"""End to end: the OpenAI Agents SDK (in its own venv), in chat-completions mode and in its default Responses
mode, runs its @function_tool through the proxy, in front of a real Letta, and the agent's own tool calls
never reach it as calls to run. In Responses mode it resends its whole input each round: only the new
function output reaches the agent."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from letta_client.types import AgentState

from tests.e2e.agents_venv import run_script

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("agents_sdk_chat.py")


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("stream", [False, True], ids=["run", "run_streamed"])
def test_function_tool_loop(proxy_url: str, api_key: str, agent: AgentState, stream: bool, api: str):
    """The agent calls the SDK's tool; the SDK runs it and sends the result; the final output quotes it."""
    city = f"Paris-{uuid.uuid4().hex[:6]}"
    text = f'/call get_weather {{"city": "{city}"}}'
    out = run_script(
        SCRIPT,
        text,
        *(["stream"] if stream else []),
        PROXY_URL=proxy_url,
        PROXY_KEY=api_key,
        AGENT=agent.name,
        API=api,
    )
    assert out["calls"] == [city]
    assert out["final"].startswith(f"Echo: {text} | get_weather returned: ")
    assert f"sunny in {city}, 21 C" in out["final"]
    assert out["items"][:2] == ["tool_call_item", "tool_call_output_item"]


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_the_agents_own_tool_call_is_not_run_by_the_sdk(
    proxy_url: str, api_key: str, agent: AgentState, api: str
):
    """The agent's conversation_search (Letta ran it) does not make the SDK look for a tool it lacks
    (before: ModelBehaviorError "Tool conversation_search not found")."""
    out = run_script(SCRIPT, "/tool sdk", PROXY_URL=proxy_url, PROXY_KEY=api_key, AGENT=agent.name, API=api)
    assert out["final"] == "Echo: /tool sdk"
    assert out["calls"] == [] and "tool_call_item" not in out["items"]
