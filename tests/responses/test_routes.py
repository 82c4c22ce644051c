"""POST /v1/responses through the whole app, against a mocked Letta serving real captures."""

import json
from pathlib import Path
from typing import Any

import httpx
import respx
from litestar.testing import TestClient
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from proxy.app import create_app
from proxy.letta.wire import LettaMessage
from proxy.responses.ids import ResponseRef, make_response_id, read_response_id
from proxy.responses.serving import is_latest
from tests.chat.test_routes import assert_openai_error, sent_body
from tests.conftest import AGENT, KEY, make_settings, sse
from tests.letta_captures import wire

RESPONSES = "/v1/responses"
HELLO = {"model": AGENT["name"], "input": "hello"}
CAPTURED_RUN = "run-6ff1363a-68a2-4b76-9bb3-2c2fe645c545"  # send_message.json's run
CONVERSATION = "conv-e554fd60-023f-4a0c-9447-1924e203858b"


def events_of(body: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each SSE frame; every frame must have both lines, in that order."""
    frames = [frame for frame in body.split("\n\n") if frame]
    parsed = []
    for frame in frames:
        name, data = frame.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), frame
        parsed.append((name[7:], json.loads(data[6:])))
    return parsed


def latest_message(letta: respx.MockRouter, run_id: str, conversation: str = "default") -> respx.Route:
    """Letta's newest message of a history, which tells whose turn was last."""
    message = {"id": "message-1", "message_type": "assistant_message", "run_id": run_id, "content": "Echo"}
    return letta.get(f"/v1/conversations/{conversation}/messages", name="latest").mock(
        return_value=httpx.Response(200, json=[message])
    )


def test_a_sync_turn_answers_a_response_object(client: TestClient, letta: respx.MockRouter) -> None:
    """The agent's answer as a message item with output_text, Letta's usage, and an id naming the turn."""
    response = client.post(RESPONSES, json=HELLO)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["object"], body["status"], body["model"]) == ("response", "completed", AGENT["name"])
    [item] = body["output"]
    assert item["type"] == "message" and item["role"] == "assistant" and item["status"] == "completed"
    assert item["content"][0]["type"] == "output_text"
    assert item["content"][0]["text"] == "Echo: hello from the proxy test"
    assert item["id"] == "msg_408a67c6b38a45d28125eb0e58184c32"
    assert body["usage"]["input_tokens"] == 712 and body["usage"]["total_tokens"] == 719
    assert read_response_id(body["id"], KEY.encode()) == ResponseRef(AGENT["id"], None, CAPTURED_RUN)
    assert sent_body(letta) == {"messages": [{"role": "user", "content": "hello"}]}


def test_a_streamed_turn_is_named_events_from_created_to_completed(
    client: TestClient, letta: respx.MockRouter
) -> None:
    """`event:` + `data:` frames, response.created first, response.completed last, no [DONE]."""
    letta["send"].mock(return_value=sse("stream_tokens.sse"))
    response = client.post(RESPONSES, json={**HELLO, "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in response.text
    events = events_of(response.text)
    assert [name for name, _ in events] == [data["type"] for _, data in events]
    assert events[0][0] == "response.created" and events[-1][0] == "response.completed"
    text = "".join(data["delta"] for name, data in events if name == "response.output_text.delta")
    assert text == "Echo: stream me token by token"
    assert events[0][1]["response"]["id"] == events[-1][1]["response"]["id"]
    assert sent_body(letta)["stream_tokens"] is True


def test_previous_response_id_continues_its_history(client: TestClient, letta: respx.MockRouter) -> None:
    """The id names the agent: no model needed; the turn goes on once Letta says it was the latest."""
    latest = latest_message(letta, CAPTURED_RUN)
    previous = make_response_id(ResponseRef(AGENT["id"], None, CAPTURED_RUN), KEY.encode())
    response = client.post(RESPONSES, json={"input": "and then?", "previous_response_id": previous})
    assert response.status_code == 200, response.text
    assert latest.called and letta["send"].called
    assert response.json()["previous_response_id"] == previous


def test_an_older_previous_response_is_a_409_and_reaches_no_agent(
    client: TestClient, letta: respx.MockRouter
) -> None:
    """Letta cannot branch a history at an older turn, so the proxy refuses rather than answer wrongly."""
    latest_message(letta, "run-00000000-0000-0000-0000-000000000001")
    previous = make_response_id(ResponseRef(AGENT["id"], None, CAPTURED_RUN), KEY.encode())
    response = client.post(RESPONSES, json={**HELLO, "previous_response_id": previous})
    assert_openai_error(response, 409, "response_not_latest")
    assert not letta["send"].called


def test_a_previous_response_id_of_another_key_does_not_exist(
    client: TestClient, letta: respx.MockRouter
) -> None:
    previous = make_response_id(ResponseRef(AGENT["id"], None, CAPTURED_RUN), b"sk-someone-else")
    response = client.post(RESPONSES, json={**HELLO, "previous_response_id": previous})
    error = assert_openai_error(response, 404, "response_not_found")
    assert error["param"] == "previous_response_id" and not letta["send"].called


def test_a_previous_response_of_another_model_is_a_400(client: TestClient, letta: respx.MockRouter) -> None:
    latest_message(letta, CAPTURED_RUN)
    previous = make_response_id(ResponseRef(AGENT["id"], None, CAPTURED_RUN), KEY.encode())
    response = client.post(
        RESPONSES, json={**HELLO, "model": "another-bot", "previous_response_id": previous}
    )
    assert assert_openai_error(response, 400)["param"] == "model"
    assert not letta["send"].called


def test_a_conversation_goes_to_that_conversation_if_it_is_the_agents(
    client: TestClient, letta: respx.MockRouter
) -> None:
    """`conversation` names a Letta conversation; one of another agent is not found."""
    owner = letta.get(f"/v1/conversations/{CONVERSATION}").mock(
        return_value=httpx.Response(200, json={"id": CONVERSATION, "agent_id": "agent-someone-else"})
    )
    response = client.post(RESPONSES, json={**HELLO, "conversation": CONVERSATION})
    assert_openai_error(response, 404, "conversation_not_found")
    owner.mock(return_value=httpx.Response(200, json={"id": CONVERSATION, "agent_id": AGENT["id"]}))
    turn = letta.post(f"/v1/conversations/{CONVERSATION}/messages").mock(
        return_value=sse("stream_tokens.sse")
    )
    response = client.post(RESPONSES, json={**HELLO, "conversation": {"id": CONVERSATION}})
    assert response.status_code == 200 and turn.called and not letta["send"].called
    assert response.json()["output"][0]["content"][0]["text"] == "Echo: stream me token by token"
    ref = read_response_id(response.json()["id"], KEY.encode())
    assert ref.conversation_id == CONVERSATION


def test_bad_input_is_an_openai_400(client: TestClient, letta: respx.MockRouter) -> None:
    assert_openai_error(client.post(RESPONSES, json={"model": AGENT["name"]}), 400)
    error = assert_openai_error(
        client.post(RESPONSES, json={**HELLO, "input": [{"type": "item_reference", "id": "x"}]}), 400
    )
    assert error["param"] == "input[0].type" and not letta["send"].called
    both = {**HELLO, "previous_response_id": "resp_x", "conversation": CONVERSATION}
    assert assert_openai_error(client.post(RESPONSES, json=both), 400)["param"] == "conversation"


def test_a_stream_that_fails_to_open_is_a_real_http_error(
    client: TestClient, letta: respx.MockRouter
) -> None:
    letta["send"].mock(return_value=httpx.Response(500, json={"detail": "database is down"}))
    response = client.post(RESPONSES, json={**HELLO, "stream": True})
    assert_openai_error(response, 502, "upstream_error")
    assert response.headers["x-should-retry"] == "false"


def _message(kind: str, run_id: str) -> LettaMessage:
    return LettaMessage(message_type=kind, run_id=run_id)


def test_a_previous_response_is_latest_until_a_user_message_follows_it() -> None:
    """Its own later Letta requests (a tool result, a denial) do not count; a user turn after it does."""
    own = [_message("assistant_message", "run-b"), _message("approval_response_message", "run-b")]
    mine = [_message("approval_request_message", "run-a"), _message("user_message", "run-a")]
    assert is_latest(mine, "run-a")
    assert is_latest([*own, *mine], "run-a")
    assert not is_latest(
        [_message("assistant_message", "run-c"), _message("user_message", "run-c"), *mine], "run-a"
    )
    assert not is_latest(own, "run-a")  # not among the newest messages at all


def test_get_rebuilds_a_response_from_its_letta_run(client: TestClient, letta: respx.MockRouter) -> None:
    """The run's messages, stop reason and usage make the same response again; a vanished run is a 404."""
    made = client.post(RESPONSES, json=HELLO).json()
    captured = wire("send_message.json")
    run = {
        "id": CAPTURED_RUN,
        "status": "completed",
        "stop_reason": "end_turn",
        "created_at": "2026-11-23T03:45:57",
    }
    letta.get(f"/v1/runs/{CAPTURED_RUN}").mock(return_value=httpx.Response(200, json=run))
    user = {"id": "message-0", "message_type": "user_message", "run_id": CAPTURED_RUN, "content": "hello"}
    messages = letta.get(f"/v1/runs/{CAPTURED_RUN}/messages").mock(
        return_value=httpx.Response(200, json=[user, *captured["messages"]])
    )
    letta.get(f"/v1/runs/{CAPTURED_RUN}/usage").mock(return_value=httpx.Response(200, json=captured["usage"]))
    again = client.get(f"{RESPONSES}/{made['id']}").json()
    assert again["output"] == made["output"] and again["usage"] == made["usage"]
    assert (again["id"], again["status"]) == (made["id"], "completed")
    messages.mock(return_value=httpx.Response(404, json={"detail": "gone"}))
    assert_openai_error(client.get(f"{RESPONSES}/{made['id']}"), 404, "response_not_found")
    other = make_response_id(ResponseRef(AGENT["id"], None, CAPTURED_RUN), b"sk-other")
    assert_openai_error(client.get(f"{RESPONSES}/{other}"), 404, "response_not_found")


def test_function_outputs_are_a_400_when_client_tools_are_ignored(
    tmp_path: Path, letta: respx.MockRouter
) -> None:
    """PROXY_CLIENT_TOOLS=ignore: a request with only function outputs has nothing for the agent."""
    output = {"type": "function_call_output", "call_id": "call_1", "output": "42"}
    with TestClient(create_app(make_settings(tmp_path, proxy_client_tools="ignore"))) as client:
        client.headers["Authorization"] = f"Bearer {KEY}"
        error = assert_openai_error(client.post(RESPONSES, json={**HELLO, "input": [output]}), 400)
    assert error["param"] == "input" and not letta["send"].called


def test_the_openai_sdks_own_models_accept_every_object_strictly(
    client: TestClient, letta: respx.MockRouter
) -> None:
    """The response and each stream event validate against the openai SDK's pydantic types, not only
    construct (which accepts anything): a field the SDK requires is never missing."""
    Response.model_validate(client.post(RESPONSES, json=HELLO).json())
    letta["send"].mock(return_value=sse("stream_approval.sse"))  # the agent calls the client's tool
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    streamed = client.post(RESPONSES, json={**HELLO, "stream": True, "tools": tools})
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    events = [adapter.validate_python(data) for _, data in events_of(streamed.text)]
    final = events[-1].response
    assert [item.type for item in final.output] == ["function_call"] and final.output[0].name == "get_weather"
