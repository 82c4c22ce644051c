"""Client tools over HTTP, against a respx Letta: what reaches Letta for a request with tools or tool
results, per setting and agent type, and Letta's 409 for a waiting agent answered by a denial."""

import json
from pathlib import Path
from typing import Any

import httpx
import respx
from litestar.testing import TestClient

from proxy.app import create_app
from tests.conftest import AGENT, KEY, agents_page, make_settings
from tests.letta_captures import raw, wire

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
ASK = {"model": AGENT["name"], "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER]}
PENDING_409 = httpx.Response(
    409, content=raw("send_pending_approval.json"), headers={"content-type": "application/json"}
)


def serve(tmp_path: Path, **settings: Any) -> TestClient:
    client = TestClient(create_app(make_settings(tmp_path, **settings)))
    client.headers["Authorization"] = f"Bearer {KEY}"
    return client


def sent(letta: respx.MockRouter) -> list[dict[str, Any]]:
    return [json.loads(call.request.content) for call in letta["send"].calls]


def test_tools_reach_letta_as_client_tools(tmp_path: Path, letta: respx.MockRouter) -> None:
    """By default a request's function tools are offered to the agent."""
    with serve(tmp_path) as client:
        assert client.post("/v1/chat/completions", json=ASK).status_code == 200
    assert sent(letta)[0]["client_tools"] == [{"name": "get_weather", "parameters": {"type": "object"}}]


def test_forwarding_off_sends_no_client_tools(tmp_path: Path, letta: respx.MockRouter) -> None:
    """PROXY_CLIENT_TOOLS=ignore: the request is answered as if it had no tools."""
    with serve(tmp_path, proxy_client_tools="ignore") as client:
        assert client.post("/v1/chat/completions", json=ASK).status_code == 200
    assert "client_tools" not in sent(letta)[0]


def _older_agent(letta: respx.MockRouter) -> None:
    agent = {**AGENT, "agent_type": "memgpt_v2_agent"}
    letta.routes["agents"].mock(side_effect=lambda request: agents_page(request, [agent]))


def test_an_agent_type_without_client_tools_is_answered_without_them(
    tmp_path: Path, letta: respx.MockRouter
) -> None:
    """By default tools for an agent type that ignores client tools are left out, not refused."""
    _older_agent(letta)
    with serve(tmp_path) as client:
        assert client.post("/v1/chat/completions", json=ASK).status_code == 200
    assert "client_tools" not in sent(letta)[0]


def test_an_agent_type_without_client_tools_may_refuse_them(tmp_path: Path, letta: respx.MockRouter) -> None:
    """PROXY_CLIENT_TOOLS_UNSUPPORTED=reject: a 400 naming tools, and nothing reaches the agent."""
    _older_agent(letta)
    with serve(tmp_path, proxy_client_tools_unsupported="reject") as client:
        response = client.post("/v1/chat/completions", json=ASK)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tools" and not letta["send"].called


def test_a_turn_letta_refuses_for_a_waiting_agent_is_sent_again_with_a_denial(
    tmp_path: Path, letta: respx.MockRouter
) -> None:
    """Letta's 409 PENDING_APPROVAL: the proxy finds the pending call, denies it and sends the turn again
    in the same request; the client gets the answer, not an error."""
    letta.routes["send"].side_effect = [
        PENDING_409,
        httpx.Response(200, content=raw("send_message.json"), headers={"content-type": "application/json"}),
    ]
    waiting = wire("send_approval.json")["messages"]
    letta.get("/v1/conversations/default/messages").mock(return_value=httpx.Response(200, json=waiting))
    with serve(tmp_path) as client:
        response = client.post("/v1/chat/completions", json={**ASK, "tools": None})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Echo: hello from the proxy test"
    first, second = sent(letta)
    assert [m.get("type", m.get("role")) for m in second["messages"]] == ["approval", "user"]
    assert second["messages"][0]["approvals"][0]["tool_call_id"] == "call_8ce62fe16c9b448f9a25"
    assert first["messages"][0]["content"] == second["messages"][1]["content"] == "hi"


def test_tool_results_when_nothing_waits_are_a_400(tmp_path: Path, letta: respx.MockRouter) -> None:
    """Results the agent does not wait on are refused in OpenAI's error shape, naming messages."""
    letta.get("/v1/conversations/default/messages").mock(return_value=httpx.Response(200, json=[]))
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    body = {
        **ASK,
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
    }
    with serve(tmp_path) as client:
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages" and not letta["send"].called
