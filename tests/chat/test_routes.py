"""The chat routes through the app: auth, model resolution, what reaches Letta, every error's shape."""

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from litestar.testing import TestClient

from proxy.app import create_app
from tests.conftest import AGENT, KEY, agents_page, make_settings, sse
from tests.letta_captures import wire

CHAT = "/v1/chat/completions"
HELLO = {"model": AGENT["name"], "messages": [{"role": "user", "content": "hello"}]}


def sent_body(letta: respx.MockRouter) -> dict[str, Any]:
    """What the proxy sent Letta, once each message's offline id is checked to be there and unique."""
    body = json.loads(letta["send"].calls.last.request.content)
    otids = [message.pop("otid") for message in body["messages"]]
    assert all(otids) and len(set(otids)) == len(otids)
    return body


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error


# --- auth ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": "Bearer "},
        {"X-Api-Key": "wrong"},
    ],
)
def test_requests_without_a_valid_key_are_refused(client: TestClient, headers: dict[str, str]) -> None:
    """Every /v1 route answers 401 in OpenAI's shape without a valid key."""
    del client.headers["Authorization"]
    for response in (
        client.get("/v1/models", headers=headers),
        client.post(CHAT, json=HELLO, headers=headers),
    ):
        assert_openai_error(response, 401, "invalid_api_key")


def test_the_key_is_checked_before_the_body(client: TestClient, letta: respx.MockRouter) -> None:
    """An unauthenticated caller learns nothing about the request format and reaches no agent."""
    del client.headers["Authorization"]
    assert_openai_error(client.post(CHAT, content=b"{not json"), 401, "invalid_api_key")
    assert not letta["send"].called


@pytest.mark.parametrize(
    "headers", [{"Authorization": f"Bearer {KEY}"}, {"X-Api-Key": KEY}, {"authorization": f"bearer {KEY}"}]
)
def test_either_header_carries_the_key(client: TestClient, headers: dict[str, str]) -> None:
    """Bearer (any case of the scheme) and X-Api-Key are both accepted."""
    del client.headers["Authorization"]
    assert client.get("/v1/models", headers=headers).status_code == 200


# --- models --------------------------------------------------------------------------------------


def test_models_lists_agents_by_name_with_their_creation_time(client: TestClient) -> None:
    """The captured agent is listed as an OpenAI model."""
    assert client.get("/v1/models").json() == {
        "object": "list",
        "data": [{"id": "proxy-test-agent", "object": "model", "created": 1795405557, "owned_by": "letta"}],
    }


def test_the_allowlist_hides_other_agents(tmp_path: Path, letta: respx.MockRouter) -> None:
    """PROXY_AGENTS limits what is listed and what can be called."""
    other = {**AGENT, "id": "agent-other", "name": "other"}
    letta["agents"].mock(side_effect=lambda request: agents_page(request, [AGENT, other]))
    with TestClient(create_app(make_settings(tmp_path, proxy_agents="other"))) as client:
        client.headers["X-Api-Key"] = KEY
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["other"]
        assert_openai_error(client.post(CHAT, json=HELLO), 404, "model_not_found")


def test_the_agent_list_is_cached(tmp_path: Path, letta: respx.MockRouter) -> None:
    """Within the cache period chat requests do not list agents again."""
    with TestClient(create_app(make_settings(tmp_path, proxy_agent_cache_seconds=60))) as client:
        client.headers["X-Api-Key"] = KEY
        for _ in range(3):
            assert client.post(CHAT, json=HELLO).status_code == 200
    assert letta["agents"].call_count == 2  # one listing: the page and the empty page after it


# --- chat: what reaches Letta --------------------------------------------------------------------


def test_only_the_new_user_turns_reach_letta(client: TestClient, letta: respx.MockRouter) -> None:
    """History before the last assistant message is not replayed to the agent."""
    body = {
        "model": AGENT["name"],
        "temperature": 0.2,
        "tools": [],
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "old"},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": "new"},
        ],
    }
    assert client.post(CHAT, json=body).status_code == 200
    assert sent_body(letta) == {"messages": [{"role": "user", "content": "new"}]}


def test_a_sync_turn_answers_a_chat_completion(client: TestClient) -> None:
    """The captured Letta turn comes back as a chat.completion naming the agent."""
    answer = client.post(CHAT, json=HELLO).json()
    assert answer["object"] == "chat.completion" and answer["model"] == "proxy-test-agent"
    assert answer["id"].startswith("chatcmpl-")
    assert answer["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Echo: hello from the proxy test",
    }
    assert answer["usage"] == {"prompt_tokens": 712, "completion_tokens": 7, "total_tokens": 719}


@pytest.mark.parametrize("model", [AGENT["id"], None])
def test_model_may_be_the_agent_id_or_omitted(
    client: TestClient, letta: respx.MockRouter, model: str
) -> None:
    """An agent id works as a model, and no model means the first agent."""
    body = {"messages": HELLO["messages"], **({"model": model} if model else {})}
    assert client.post(CHAT, json=body).json()["model"] == "proxy-test-agent"
    assert letta["send"].called


def test_the_default_agent_setting_is_used_without_a_model(tmp_path: Path, letta: respx.MockRouter) -> None:
    """PROXY_DEFAULT_AGENT picks the agent for requests that name none."""
    other = {**AGENT, "id": "agent-other", "name": "other"}
    letta["agents"].mock(side_effect=lambda request: agents_page(request, [AGENT, other]))
    route = letta.post("/v1/agents/agent-other/messages").mock(
        return_value=httpx.Response(200, json=wire("send_message.json"))
    )
    with TestClient(create_app(make_settings(tmp_path, proxy_default_agent="other"))) as client:
        client.headers["X-Api-Key"] = KEY
        assert client.post(CHAT, json={"messages": HELLO["messages"]}).json()["model"] == "other"
    assert route.called


def test_an_unknown_model_is_a_404_and_reaches_no_agent(client: TestClient, letta: respx.MockRouter) -> None:
    """An unknown model is OpenAI's 404 model_not_found."""
    error = assert_openai_error(client.post(CHAT, json={**HELLO, "model": "nobody"}), 404, "model_not_found")
    assert "nobody" in error["message"] and not letta["send"].called


# --- chat: streaming -----------------------------------------------------------------------------


def test_a_streamed_turn_asks_letta_for_tokens_and_relays_them(
    client: TestClient, letta: respx.MockRouter
) -> None:
    """stream=true opens Letta's token stream and answers SSE chunks ending in [DONE]."""
    letta["send"].mock(return_value=sse("stream_tokens.sse"))
    response = client.post(CHAT, json={**HELLO, "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    assert sent_body(letta) == {
        "messages": [{"role": "user", "content": "hello"}],
        "streaming": True,
        "stream_tokens": True,
        "include_pings": True,
    }
    frames = [line for line in response.text.split("\n\n") if line]
    assert frames[-1] == "data: [DONE]"
    text = "".join(json.loads(f[6:])["choices"][0]["delta"].get("content", "") for f in frames[:-1])
    assert text == "Echo: stream me token by token"


def test_a_stream_that_fails_to_open_is_a_real_http_error(
    client: TestClient, letta: respx.MockRouter
) -> None:
    """Letta refusing the turn before streaming gives an HTTP error status, not a 200 with an error inside."""
    letta["send"].mock(return_value=httpx.Response(500, json={"detail": "database is down"}))
    response = client.post(CHAT, json={**HELLO, "stream": True})
    error = assert_openai_error(response, 502, "upstream_error")
    assert "database is down" in error["message"]
    assert response.headers["x-should-retry"] == "false"


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "side_effect, status, code, retry",
    [
        (httpx.ReadTimeout("slow"), 504, "upstream_timeout", "false"),
        (httpx.Response(500, json={"detail": "boom"}), 502, "upstream_error", "false"),
        (httpx.Response(422, json={"detail": "bad content"}), 502, "upstream_error", "false"),
        (
            httpx.Response(
                200,
                json={
                    **wire("send_message.json"),
                    "stop_reason": {"message_type": "stop_reason", "stop_reason": "llm_api_error"},
                },
            ),
            502,
            "llm_api_error",
            "false",
        ),
    ],
)
def test_upstream_faults_get_clear_statuses(
    client: TestClient, letta: respx.MockRouter, side_effect: Any, status: int, code: str, retry: str | None
) -> None:
    """Unreachable 503, timeout 504, Letta errors 502; once the turn may have landed, no retries."""
    letta["send"].mock(side_effect=[side_effect])
    response = client.post(CHAT, json=HELLO)
    assert_openai_error(response, status, code)
    assert response.headers.get("x-should-retry") == retry
    assert "Traceback" not in response.text


def test_a_refused_connection_is_retried_then_a_retryable_503(
    client: TestClient, letta: respx.MockRouter
) -> None:
    """A turn that could not even connect never reached the agent: retried here, and safe to retry."""
    letta["send"].mock(side_effect=httpx.ConnectError("refused"))
    response = client.post(CHAT, json=HELLO)
    assert_openai_error(response, 503, "upstream_unavailable")
    assert "x-should-retry" not in response.headers
    assert letta["send"].call_count == 3  # LETTA_CONNECT_RETRIES=2 by default


def test_a_retried_turn_keeps_its_offline_ids(client: TestClient, letta: respx.MockRouter) -> None:
    """The retry is the same turn: same otid, so Letta can recognise a duplicate."""
    letta["send"].mock(side_effect=[httpx.ConnectError("refused"), letta["send"].return_value])
    assert client.post(CHAT, json=HELLO).status_code == 200
    first, second = (json.loads(call.request.content)["messages"][0]["otid"] for call in letta["send"].calls)
    assert first == second


def test_letta_down_while_listing_agents_is_a_503(client: TestClient, letta: respx.MockRouter) -> None:
    """No agent list, no answer: the client is told Letta is unreachable."""
    letta["agents"].mock(side_effect=httpx.ConnectError("refused"))
    assert_openai_error(client.get("/v1/models"), 503, "upstream_unavailable")


def test_an_agent_deleted_in_letta_is_a_404(client: TestClient, letta: respx.MockRouter) -> None:
    """If the agent vanished since it was listed, the client gets model_not_found, not a 502."""
    letta["send"].mock(return_value=httpx.Response(404, json={"detail": "Agent not found"}))
    assert_openai_error(client.post(CHAT, json=HELLO), 404, "model_not_found")


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        ({"model": AGENT["name"]}, "messages"),
    ],
)
def test_wrong_types_are_a_400_naming_the_field(
    client: TestClient, body: dict[str, Any], param: str | None
) -> None:
    """Malformed requests are the client's error, with the offending field named where there is one."""
    error = assert_openai_error(client.post(CHAT, json=body), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_malformed_json_is_a_400(client: TestClient) -> None:
    """A body that is not JSON is a 400, never a 500."""
    assert_openai_error(
        client.post(CHAT, content=b"{nope", headers={"content-type": "application/json"}), 400
    )


def test_bodies_over_the_limit_are_a_413(tmp_path: Path, letta: respx.MockRouter) -> None:
    """PROXY_MAX_BODY_BYTES bounds what is read; larger is 413 in OpenAI's shape."""
    with TestClient(create_app(make_settings(tmp_path, proxy_max_body_bytes=1000))) as client:
        client.headers["X-Api-Key"] = KEY
        big = {**HELLO, "messages": [{"role": "user", "content": "x" * 2000}]}
        assert_openai_error(client.post(CHAT, json=big), 413)
        assert client.post(CHAT, json=HELLO).status_code == 200


def test_unknown_routes_are_an_openai_404(client: TestClient) -> None:
    """Even a wrong path answers in OpenAI's error shape."""
    assert_openai_error(client.get("/v1/nothing-here"), 404)


# --- probes --------------------------------------------------------------------------------------


def test_health_needs_no_key_and_no_letta(client: TestClient, letta: respx.MockRouter) -> None:
    """Liveness answers from the process alone."""
    del client.headers["Authorization"]
    letta.get("/v1/health/").mock(side_effect=httpx.ConnectError("down"))
    assert client.get("/health").json() == {"status": "ok"}


def test_ready_follows_letta(client: TestClient, letta: respx.MockRouter) -> None:
    """Readiness is 200 while Letta answers and 503 when it does not, without a key."""
    del client.headers["Authorization"]
    route = letta.get("/v1/health/").mock(return_value=httpx.Response(200, json={"status": "ok"}))
    assert client.get("/ready").status_code == 200
    asked = route.call_count  # the start-up announcement may have asked too
    assert client.get("/ready").status_code == 200
    assert route.call_count == asked  # remembered briefly


# --- CORS ----------------------------------------------------------------------------------------

PREFLIGHT = {
    "Origin": "https://chat.example.com",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


def test_cors_is_off_by_default(client: TestClient) -> None:
    """Without PROXY_CORS_ORIGINS no browser origin is granted anything."""
    response = client.options(CHAT, headers=PREFLIGHT)
    assert "access-control-allow-origin" not in response.headers


def test_cors_allows_only_the_configured_origins(tmp_path: Path, letta: respx.MockRouter) -> None:
    """A configured origin passes the preflight; another origin does not."""
    with TestClient(
        create_app(make_settings(tmp_path, proxy_cors_origins="https://chat.example.com"))
    ) as client:
        allowed = client.options(CHAT, headers=PREFLIGHT)
        other = client.options(CHAT, headers={**PREFLIGHT, "Origin": "https://evil.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://chat.example.com"
    assert "access-control-allow-origin" not in other.headers


# --- Open WebUI background tasks ----------------------------------------------------------------

OPEN_WEBUI = wire("openwebui/v0.12.4.json")["requests"]


def test_an_open_webui_title_task_is_answered_without_the_agent(
    client: TestClient, letta: respx.MockRouter
) -> None:
    """With PROXY_TASK_REQUESTS=skip (the default), a task never reaches Letta yet gets a valid answer."""
    body = {**OPEN_WEBUI["title_generation"]["body"], "model": AGENT["name"]}
    answer = client.post(CHAT, json=body).json()
    assert json.loads(answer["choices"][0]["message"]["content"])["title"]
    assert answer["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert not letta["send"].called


def test_an_open_webui_task_may_stream(client: TestClient, letta: respx.MockRouter) -> None:
    """A task asked as a stream gets a complete, well-framed stream."""
    body = {**OPEN_WEBUI["tags_generation"]["body"], "model": AGENT["name"], "stream": True}
    frames = [f for f in client.post(CHAT, json=body).text.split("\n\n") if f]
    assert frames[-1] == "data: [DONE]" and '"finish_reason":"stop"' in frames[-2]
    assert not letta["send"].called


def test_tasks_can_be_forwarded(tmp_path: Path, letta: respx.MockRouter) -> None:
    """PROXY_TASK_REQUESTS=forward sends them to the agent like any turn."""
    with TestClient(create_app(make_settings(tmp_path, proxy_task_requests="forward"))) as client:
        client.headers["X-Api-Key"] = KEY
        body = {**OPEN_WEBUI["title_generation"]["body"], "model": AGENT["name"]}
        assert client.post(CHAT, json=body).status_code == 200
    assert letta["send"].called


# --- LiteLLM's health checks ----------------------------------------------------------------------

PROBE = {"X-Letta-Proxy-Health-Check": "1"}


@pytest.mark.parametrize("stream", [False, True])
def test_a_health_check_is_answered_without_a_turn(
    client: TestClient, letta: respx.MockRouter, stream: bool
) -> None:
    """The marked probe checks key, Letta and agent, then answers empty: nothing reaches the agent."""
    response = client.post(CHAT, json={**HELLO, "stream": stream}, headers=PROBE)
    assert response.status_code == 200 and not letta["send"].called
    assert letta["agents"].called
    if not stream:
        assert response.json()["choices"][0]["message"]["content"] == ""
        assert response.json()["model"] == AGENT["name"]


def test_a_health_check_still_reports_an_unknown_agent(client: TestClient, letta: respx.MockRouter) -> None:
    """A probe for an agent that does not exist is unhealthy: 404, like a real request."""
    assert_openai_error(
        client.post(CHAT, json={**HELLO, "model": "gone"}, headers=PROBE), 404, "model_not_found"
    )
