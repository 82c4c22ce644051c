"""End to end: the OpenAI Agents SDK in its default Responses mode (own venv) runs its @function_tool
through /v1/responses, in front of a real Letta, to a final answer quoting the tool's result."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from letta_client.types import AgentState

from tests.e2e.agents_venv import run_script

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("agents_sdk_chat.py")


@pytest.mark.parametrize("stream", [False, True], ids=["run", "run_streamed"])
def test_function_tool_loop_over_responses(proxy_url: str, api_key: str, agent: AgentState, stream: bool):
    """The SDK resends its whole input each round; only the new function output reaches the agent."""
    city = f"Lima-{uuid.uuid4().hex[:6]}"
    text = f'/call get_weather {{"city": "{city}"}}'
    out = run_script(
        SCRIPT,
        text,
        *(["stream"] if stream else []),
        PROXY_URL=proxy_url,
        PROXY_KEY=api_key,
        AGENT=agent.name,
        API="responses",
    )
    assert out["calls"] == [city]
    assert out["final"].startswith(f"Echo: {text} | get_weather returned: ")
    assert f"sunny in {city}, 21 C" in out["final"]
    assert out["items"][:2] == ["tool_call_item", "tool_call_output_item"]


def test_the_agents_own_tool_call_is_not_a_function_call(proxy_url: str, api_key: str, agent: AgentState):
    """conversation_search, which Letta ran, never reaches the SDK as a call to run."""
    out = run_script(
        SCRIPT, "/tool sdk", PROXY_URL=proxy_url, PROXY_KEY=api_key, AGENT=agent.name, API="responses"
    )
    assert out["final"] == "Echo: /tool sdk"
    assert out["calls"] == [] and "tool_call_item" not in out["items"]
