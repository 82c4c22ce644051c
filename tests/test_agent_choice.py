"""agent_choice.py through the app: per-key agent scopes, model scopes, and who is speaking."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from litestar.testing import TestClient

from proxy.app import create_app
from tests.conftest import AGENT, agents_page, make_settings, sse
from tests.letta_captures import wire
from tests.redis_server import running_redis

CHAT = "/v1/chat/completions"
OTHER = {**AGENT, "id": "agent-other", "name": "other"}


@pytest.fixture
def two_agents(letta: respx.MockRouter) -> respx.MockRouter:
    """Letta with the captured agent and a second one, both answering turns."""
    letta["agents"].mock(side_effect=lambda request: agents_page(request, [AGENT, OTHER]))
    letta.post(f"/v1/agents/{OTHER['id']}/messages", name="send_other").mock(
        return_value=httpx.Response(200, json=wire("send_message.json"))
    )
    return letta


def app(tmp_path: Path, **settings: Any) -> TestClient:
    settings.setdefault("proxy_api_keys", "sk-all,sk-other:other")
    return TestClient(create_app(make_settings(tmp_path, **settings)))


def ask(client: TestClient, key: str, **body: Any) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": "hi"}], **body}
    return client.post(CHAT, json=body, headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
def proxy(tmp_path: Path, two_agents: respx.MockRouter) -> Iterator[TestClient]:
    with app(tmp_path) as client:
        yield client


def test_a_scoped_key_sees_only_its_agents(proxy: TestClient) -> None:
    """`key:agent` lists just that agent; an unscoped key lists all."""

    def listed(key: str) -> list[str]:
        return [m["id"] for m in proxy.get("/v1/models", headers={"X-Api-Key": key}).json()["data"]]

    assert listed("sk-other") == ["other"]
    assert listed("sk-all") == ["proxy-test-agent", "other"]


@pytest.mark.parametrize("model", [AGENT["name"], AGENT["id"]])
def test_another_tenant_s_agent_is_not_found_not_forbidden(
    proxy: TestClient, two_agents: respx.MockRouter, model: str
) -> None:
    """By name or id, an agent outside the key's scope is a 404 that does not reveal it exists."""
    response = ask(proxy, "sk-other", model=model)
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    assert not two_agents["send"].called


def test_a_scoped_key_s_default_is_its_first_agent(proxy: TestClient, two_agents: respx.MockRouter) -> None:
    """Without a model, a scoped key lands on an agent it may use, never the global first agent."""
    assert ask(proxy, "sk-other").json()["model"] == "other"
    assert two_agents["send_other"].called and not two_agents["send"].called


def test_request_scope_forgets_the_model(proxy: TestClient) -> None:
    """By default a named model applies to its request only."""
    assert ask(proxy, "sk-all", model="other").json()["model"] == "other"
    assert ask(proxy, "sk-all").json()["model"] == "proxy-test-agent"


def test_global_scope_makes_a_named_model_the_key_s_default(
    tmp_path: Path, two_agents: respx.MockRouter
) -> None:
    """With `global`, naming a model switches the default for that key, and for no other key."""
    with app(tmp_path, proxy_model_scope="global", proxy_api_keys="sk-a,sk-b") as client:
        assert ask(client, "sk-a", model="other").status_code == 200
        assert ask(client, "sk-a").json()["model"] == "other"
        assert ask(client, "sk-a", user="someone-else").json()["model"] == "other"
        assert ask(client, "sk-b").json()["model"] == "proxy-test-agent"


def test_session_scope_remembers_per_user(tmp_path: Path, two_agents: respx.MockRouter) -> None:
    """With `session`, each `user` (or the default session) keeps its own choice."""
    with app(tmp_path, proxy_model_scope="session", proxy_api_keys="sk-a") as client:
        assert ask(client, "sk-a", model="other", user="alice").status_code == 200
        assert ask(client, "sk-a", user="alice").json()["model"] == "other"
        assert ask(client, "sk-a", user="bob").json()["model"] == "proxy-test-agent"
        assert ask(client, "sk-a").json()["model"] == "proxy-test-agent"


def test_a_remembered_agent_that_is_gone_is_not_used(tmp_path: Path, two_agents: respx.MockRouter) -> None:
    """A remembered choice is re-checked against the agents listed now: a deleted one falls back."""
    with app(tmp_path, proxy_model_scope="global") as client:
        assert ask(client, "sk-all", model="other").status_code == 200
        two_agents["agents"].mock(side_effect=lambda request: agents_page(request, [AGENT]))
        assert ask(client, "sk-all").json()["model"] == "proxy-test-agent"


def test_the_user_is_the_sender_name_letta_receives(proxy: TestClient, two_agents: respx.MockRouter) -> None:
    """The request's `user` reaches the agent as the message's name, made safe for any LLM provider."""
    assert ask(proxy, "sk-all", model=AGENT["name"], user="Ada Lovelace <ada@example.com>").status_code == 200
    sent = json.loads(two_agents["send"].calls.last.request.content)["messages"][0]
    assert sent["name"] == "Ada_Lovelace_ada_example_com"


def test_a_message_name_wins_over_the_request_user(proxy: TestClient, two_agents: respx.MockRouter) -> None:
    """A name on the message itself is the more precise speaker."""
    body = {
        "model": AGENT["name"],
        "user": "account-7",
        "messages": [{"role": "user", "content": "hi", "name": "zoe"}],
    }
    assert proxy.post(CHAT, json=body, headers={"X-Api-Key": "sk-all"}).status_code == 200
    assert json.loads(two_agents["send"].calls.last.request.content)["messages"][0]["name"] == "zoe"


def test_replicas_share_the_model_scope_through_redis(tmp_path: Path, two_agents: respx.MockRouter) -> None:
    """Two proxies on one Redis: a model chosen through one is the default on the other."""
    with running_redis(tmp_path) as redis:
        shared = {"proxy_model_scope": "session", "proxy_redis_url": redis.url}
        with app(tmp_path, **shared) as one, app(tmp_path, **shared) as two:
            assert ask(one, "sk-all", model="other", user="carol").status_code == 200
            assert ask(two, "sk-all", user="carol").json()["model"] == "other"
            assert ask(two, "sk-all", user="dave").json()["model"] == "proxy-test-agent"


def test_a_redis_outage_is_a_503_not_a_guess(tmp_path: Path, two_agents: respx.MockRouter) -> None:
    """If the shared store cannot be read, the proxy says so rather than picking an agent at random."""
    with running_redis(tmp_path) as redis:
        url = redis.url
    with app(tmp_path, proxy_model_scope="session", proxy_redis_url=url) as client:
        response = ask(client, "sk-all", user="erin")
        assert response.status_code == 503 and response.json()["error"]["code"] == "session_store_unavailable"


# --- Letta conversations --------------------------------------------------------------------------


@pytest.fixture
def conversations(letta: respx.MockRouter) -> respx.MockRouter:
    """A Letta that offers conversations, answering their turns from the stream capture."""
    created = iter(range(1, 100))

    def create(request: httpx.Request) -> httpx.Response:
        assert request.url.params["agent_id"] == AGENT["id"]
        return httpx.Response(200, json={"id": f"conv-{next(created)}", "agent_id": AGENT["id"]})

    letta.get("/v1/conversations/", name="probe").mock(return_value=httpx.Response(200, json=[]))
    letta.post("/v1/conversations/", name="create").mock(side_effect=create)
    letta.post(url__regex=r"/v1/conversations/conv-\d+/messages", name="turn").mock(
        side_effect=lambda request: sse("stream_tokens.sse")
    )
    return letta


def chat_key(key: str) -> dict[str, str]:
    return {"X-Api-Key": "sk-all", "X-Letta-Chat-Key": key}


def test_a_chat_key_pins_one_conversation(proxy: TestClient, conversations: respx.MockRouter) -> None:
    """The same key reuses its conversation; another key opens another; no key uses the agent's history."""
    body = {"model": AGENT["name"], "messages": [{"role": "user", "content": "hi"}]}
    for key in ("chat-a", "chat-a", "chat-b"):
        answer = proxy.post(CHAT, json=body, headers=chat_key(key))
        assert answer.json()["choices"][0]["message"]["content"] == "Echo: stream me token by token"
    turns = [call.request.url.path for call in conversations["turn"].calls]
    assert turns == ["/v1/conversations/conv-1/messages"] * 2 + ["/v1/conversations/conv-2/messages"]
    assert conversations["create"].call_count == 2 and conversations["probe"].call_count == 1
    assert proxy.post(CHAT, json=body, headers={"X-Api-Key": "sk-all"}).status_code == 200
    assert conversations["send"].called


def test_a_conversation_turn_streams_like_any_other(
    proxy: TestClient, conversations: respx.MockRouter
) -> None:
    """Streaming through a conversation gives the same frames, and asks Letta for tokens."""
    body = {"model": AGENT["name"], "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    frames = [f for f in proxy.post(CHAT, json=body, headers=chat_key("s")).text.split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    sent = json.loads(conversations["turn"].calls.last.request.content)
    assert (sent["streaming"], sent["stream_tokens"]) == (True, True)


def test_chat_keys_of_different_tenants_never_share_a_conversation(
    tmp_path: Path, two_agents: respx.MockRouter, conversations: respx.MockRouter
) -> None:
    """Two keys using the same chat key get two conversations: the pin is kept per client key."""
    body = {"model": AGENT["name"], "messages": [{"role": "user", "content": "hi"}]}
    with app(tmp_path, proxy_api_keys="sk-a,sk-b") as client:
        for key in ("sk-a", "sk-b"):
            client.post(CHAT, json=body, headers={"X-Api-Key": key, "X-Letta-Chat-Key": "same"})
    assert conversations["create"].call_count == 2


def test_without_conversations_the_chat_key_is_ignored(proxy: TestClient, letta: respx.MockRouter) -> None:
    """A Letta without conversations (the open-source 0.16.8) keeps every turn in the agent's history."""
    letta.get("/v1/conversations/").mock(return_value=httpx.Response(404, json={"detail": "Not Found"}))
    body = {"model": AGENT["name"], "messages": [{"role": "user", "content": "hi"}]}
    assert proxy.post(CHAT, json=body, headers=chat_key("x")).status_code == 200
    assert letta["send"].called


# --- the default agent and shared names -----------------------------------------------------------


def test_without_a_model_the_oldest_agent_answers_not_the_newest(
    tmp_path: Path, letta: respx.MockRouter
) -> None:
    """An agent created later (listed first, as Letta lists newest first) never becomes the default."""
    newer = {**OTHER, "created_at": "2099-01-01T00:00:00Z"}
    letta["agents"].mock(side_effect=lambda request: agents_page(request, [newer, AGENT]))
    with app(tmp_path) as client:
        assert ask(client, "sk-all").json()["model"] == AGENT["name"]


def test_agents_sharing_a_name_are_listed_by_id_and_the_name_is_refused(
    tmp_path: Path, letta: respx.MockRouter
) -> None:
    """Two agents named alike: each is listed and reached by its id; the bare name is a 400 naming both."""
    twin = {**AGENT, "id": "agent-twin"}
    letta["agents"].mock(side_effect=lambda request: agents_page(request, [AGENT, twin, OTHER]))
    with app(tmp_path) as client:
        listed = client.get("/v1/models", headers={"X-Api-Key": "sk-all"}).json()["data"]
        assert [model["id"] for model in listed] == [AGENT["id"], "agent-twin", "other"]
        refused = ask(client, "sk-all", model=AGENT["name"])
        error = refused.json()["error"]
        assert refused.status_code == 400 and error["code"] == "ambiguous_model" and error["param"] == "model"
        assert AGENT["id"] in error["message"] and "agent-twin" in error["message"]
        assert not letta["send"].called
        assert ask(client, "sk-all", model=AGENT["id"]).json()["model"] == AGENT["name"]


def test_an_agent_made_a_moment_ago_is_found_without_waiting_for_the_cache(
    tmp_path: Path, letta: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model missing from the cached list lists again at once; misses cost at most one listing a second."""
    now = [1000.0]
    monkeypatch.setattr("proxy.letta.agents.time.monotonic", lambda: now[0])
    listed = [AGENT]
    letta["agents"].mock(side_effect=lambda request: agents_page(request, listed))
    with app(tmp_path, proxy_agent_cache_seconds=600) as client:
        assert ask(client, "sk-all").status_code == 200
        listings = letta["agents"].call_count
        listed.append(OTHER)
        now[0] += 1.5  # the cached list is 1.5 s old, far inside its 600 s
        letta.post(f"/v1/agents/{OTHER['id']}/messages").mock(
            return_value=httpx.Response(200, json=wire("send_message.json"))
        )
        assert ask(client, "sk-all", model="other").json()["model"] == "other"
        relisted = letta["agents"].call_count
        assert relisted > listings
        for _ in range(5):
            assert ask(client, "sk-all", model="no-such-agent").status_code == 404
        assert letta["agents"].call_count == relisted


# --- Open WebUI's chats and users (its ENABLE_FORWARD_USER_INFO_HEADERS=true headers) ----------------

OPENWEBUI_TASKS = json.loads((Path(__file__).parent / "fixtures" / "openwebui" / "v0.12.4.json").read_text())


def openwebui(chat: str, **more: str) -> dict[str, str]:
    return {"X-Api-Key": "sk-all", "X-OpenWebUI-Chat-Id": chat, **more}


def conversation_turns(conversations: respx.MockRouter) -> list[str]:
    return [call.request.url.path.split("/")[3] for call in conversations["turn"].calls]


def test_each_open_webui_chat_is_its_own_conversation(
    proxy: TestClient, conversations: respx.MockRouter
) -> None:
    """Open WebUI's chat id pins a conversation as a chat key does, with no setting on its side."""
    body = {"model": AGENT["name"], "messages": [{"role": "user", "content": "hi"}]}
    for chat in ("chat-1", "chat-1", "chat-2"):
        assert proxy.post(CHAT, json=body, headers=openwebui(chat)).status_code == 200
    assert conversation_turns(conversations) == ["conv-1", "conv-1", "conv-2"]
    assert not conversations["send"].called


def test_the_explicit_chat_key_wins_over_open_webui_s_chat_id(
    proxy: TestClient, conversations: respx.MockRouter
) -> None:
    """An admin's `X-Letta-Chat-Key` decides; Open WebUI's chat id counts only without it."""
    body = {"model": AGENT["name"], "messages": [{"role": "user", "content": "hi"}]}
    for headers in (
        openwebui("chat-1", **{"X-Letta-Chat-Key": "team"}),
        openwebui("chat-2", **{"X-Letta-Chat-Key": "team"}),
        openwebui("chat-1"),
    ):
        assert proxy.post(CHAT, json=body, headers=headers).status_code == 200
    assert conversation_turns(conversations) == ["conv-1", "conv-1", "conv-2"]


def test_open_webui_s_chat_id_can_be_turned_off(tmp_path: Path, conversations: respx.MockRouter) -> None:
    """PROXY_OPENWEBUI_CHAT_ID=false: Open WebUI's chats share the agent's history; a chat key still pins."""
    body = {"model": AGENT["name"], "messages": [{"role": "user", "content": "hi"}]}
    with app(tmp_path, proxy_openwebui_chat_id=False) as client:
        assert client.post(CHAT, json=body, headers=openwebui("chat-1")).status_code == 200
        assert conversations["send"].call_count == 1 and not conversations["create"].called
        headers = openwebui("chat-1", **{"X-Letta-Chat-Key": "mine"})
        assert client.post(CHAT, json=body, headers=headers).status_code == 200
    assert conversation_turns(conversations) == ["conv-1"]


def test_a_too_long_open_webui_chat_id_is_a_400_naming_its_header(
    proxy: TestClient, conversations: respx.MockRouter
) -> None:
    """A chat id longer than a chat key may be is refused before anything reaches Letta."""
    body = {"model": AGENT["name"], "messages": [{"role": "user", "content": "hi"}]}
    response = proxy.post(CHAT, json=body, headers=openwebui("c" * 257))
    assert response.status_code == 400 and response.json()["error"]["param"] == "X-OpenWebUI-Chat-Id"
    assert not conversations["create"].called and not conversations["send"].called


@pytest.mark.parametrize("marked", [True, False], ids=["by-header", "by-prompt"])
@pytest.mark.parametrize("task", ["title_generation", "tags_generation", "follow_up_generation"])
def test_a_forwarded_background_task_opens_no_conversation(
    tmp_path: Path, conversations: respx.MockRouter, task: str, marked: bool
) -> None:
    """With PROXY_TASK_REQUESTS=forward, a task carrying a chat id (or a chat key) goes to the agent's own
    history: it neither opens a conversation nor writes its prompt into the chat's."""
    sample = OPENWEBUI_TASKS["requests"][task]
    headers = openwebui("chat-1", **{"X-Letta-Chat-Key": "chat-1"}, **(sample["headers"] if marked else {}))
    with app(tmp_path, proxy_task_requests="forward") as client:
        body = {**sample["body"], "model": AGENT["name"]}
        assert client.post(CHAT, json=body, headers=headers).status_code == 200
    assert conversations["send"].call_count == 1
    assert not conversations["create"].called and not conversations["turn"].called


def sent_name(letta: respx.MockRouter) -> str | None:
    return json.loads(letta["send"].calls.last.request.content)["messages"][0].get("name")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, "Jos_Garc_a"),
        ({"user": "account-7"}, "account-7"),
        ({"messages": [{"role": "user", "content": "hi", "name": "zoe"}]}, "zoe"),
    ],
    ids=["header", "user-wins", "message-name-wins"],
)
def test_open_webui_s_user_name_is_the_sender_unless_the_request_names_one(
    proxy: TestClient, two_agents: respx.MockRouter, body: dict[str, Any], expected: str
) -> None:
    """X-OpenWebUI-User-Name (percent-encoded by Open WebUI) names the sender; `user` and `name` win."""
    body = {"model": AGENT["name"], "messages": [{"role": "user", "content": "hi"}], **body}
    headers = {"X-Api-Key": "sk-all", "X-OpenWebUI-User-Name": "Jos%C3%A9%20Garc%C3%ADa"}
    assert proxy.post(CHAT, json=body, headers=headers).status_code == 200
    assert sent_name(two_agents) == expected
