"""user_agents.py: one agent per end user of a template, its naming, its lookup and its races.

The pure parts are checked on a real captured template state; the lookup through the app against a
respx Letta that keeps its agents like the real one (tags, creation times, deletes); the races against
an in-memory Letta whose every call yields, so concurrent lookups interleave as they would on the wire.
"""

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import respx
from litestar.testing import TestClient

from proxy.app import create_app
from proxy.errors import ProxyError
from proxy.letta import Agent, Letta
from proxy.letta.wire import AgentRecord
from proxy.redis_store import connect
from proxy.redis_turns import RedisTurns
from proxy.turns import TurnQueue
from proxy.user_agents import UserAgents, agent_name, copy_body, end_user, user_tag
from tests.conftest import AGENT, make_settings, mocked_letta
from tests.letta_captures import raw, wire
from tests.redis_server import running_redis

TEMPLATE_STATE = wire("get_template_agent.json")
TEMPLATE = {**AGENT, "id": TEMPLATE_STATE["id"], "name": "assistant"}
CHAT = "/v1/chat/completions"
KEY = {"Authorization": "Bearer sk-test-key"}


# --- naming and copying (pure) -------------------------------------------------------------------


def test_the_user_field_names_the_user_before_the_open_webui_header() -> None:
    """`user` wins; the header is the fallback; a blank `user` counts as none."""
    header = {"x-openwebui-user-id": "owui-7"}
    assert end_user("alice", header) == "alice"
    assert end_user(None, header) == "owui-7"
    assert end_user("  ", header) == "owui-7"


@pytest.mark.parametrize("user, headers", [(None, None), ("", {}), (None, {"x-openwebui-user-id": " "})])
def test_no_user_is_a_400_naming_user(user: str | None, headers: dict[str, str] | None) -> None:
    """Without a user there is no agent to pick: an OpenAI 400 naming `user`."""
    with pytest.raises(ProxyError) as raised:
        end_user(user, headers)
    assert (raised.value.status, raised.value.param, raised.value.code) == (400, "user", "user_required")


def test_the_tag_is_a_keyed_hash_of_template_and_user() -> None:
    """Same inputs, same tag (replicas agree); another template, user or secret, another tag; the user id
    never appears in it."""
    tag = user_tag(b"s", "agent-1", "alice@example.com")
    assert tag == user_tag(b"s", "agent-1", "alice@example.com")
    assert tag.startswith("lop-user:") and len(tag) == len("lop-user:") + 32
    assert int(tag.removeprefix("lop-user:"), 16) >= 0
    others = {user_tag(b"s", "agent-2", "alice@example.com"), user_tag(b"s", "agent-1", "bob@example.com")}
    assert tag not in others | {user_tag(b"t", "agent-1", "alice@example.com")} and len(others) == 2
    assert "alice" not in tag and "example" not in tag


def test_template_and_user_cannot_be_shifted_into_each_other() -> None:
    """The two parts are separated, so ("a", "bc") and ("ab", "c") are different users."""
    assert user_tag(b"s", "agent-a", "bc") != user_tag(b"s", "agent-ab", "c")


def test_the_name_is_letta_safe_and_holds_no_user_id() -> None:
    """Letta refuses `/:*?` and the like in a name: those become `-`; the user shows only as a hash."""
    tag = user_tag(b"", "agent-1", "alice")
    name = agent_name("team/helper: v2?", tag)
    assert name == f"team-helper- v2--user-{tag.removeprefix('lop-user:')[:12]}"
    assert "alice" not in name


def test_the_copy_takes_the_template_s_memory_tools_and_model_but_no_messages() -> None:
    """From a real template state: new blocks with the same contents, the same tools by id, the same
    model config and system prompt, the tool secrets; no ids, no messages, no Letta extras."""
    body = copy_body(TEMPLATE_STATE, "assistant-user-0123", ["lop-user:x", "lop-template:y"])
    blocks = {block["label"]: block for block in body["memory_blocks"]}
    assert blocks["persona"] == {
        "label": "persona",
        "value": "I am the template persona.",
        "limit": 5000,
        "description": TEMPLATE_STATE["blocks"][0]["description"],
        "read_only": False,
        "metadata": {},
    }
    assert blocks["policy"]["read_only"] is True and set(blocks) == {"persona", "human", "policy"}
    assert all("id" not in block for block in body["memory_blocks"])
    assert body["tool_ids"] == [tool["id"] for tool in TEMPLATE_STATE["tools"]] and body["tool_ids"]
    for same in (
        "system",
        "llm_config",
        "embedding_config",
        "agent_type",
        "tool_rules",
        "compaction_settings",
    ):
        assert body[same] == TEMPLATE_STATE[same]
    assert body["secrets"] == {"API_TOKEN": "s3cret"}
    assert body["tags"] == ["lop-user:x", "lop-template:y"] and body["name"] == "assistant-user-0123"
    assert body["include_base_tools"] is False and body["include_base_tool_rules"] is False
    assert not {"id", "message_ids", "messages", "initial_message_sequence", "identity_ids"} & set(body)


def test_a_sleep_time_template_is_copied_without_its_sleep_time_agent() -> None:
    """Letta would make the copy's sleep-time agent untagged, sharing the user's blocks, visible to all."""
    body = copy_body({**TEMPLATE_STATE, "enable_sleeptime": True}, "n", ["lop-user:x"])
    assert "enable_sleeptime" not in body


# --- through the app, against a Letta that keeps its agents -----------------------------------------


@dataclass
class Table:
    """Letta's agents as its API shows them: listed (by tag too), retrieved, created, deleted."""

    agents: list[dict[str, Any]]
    creates: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    clock: datetime = datetime(2026, 11, 23, tzinfo=UTC)

    def add(self, name: str, tags: list[str], agent_id: str | None = None) -> dict[str, Any]:
        self.clock += timedelta(seconds=1)
        agent = {
            **AGENT,
            "id": agent_id or f"agent-{len(self.agents):04d}",
            "name": name,
            "tags": tags,
            "created_at": self.clock.isoformat(),
        }
        self.agents.append(agent)
        return agent

    def listing(self, request: httpx.Request) -> httpx.Response:
        if "after" in request.url.params:
            return httpx.Response(200, json=[])
        wanted = request.url.params.get_list("tags")
        return httpx.Response(
            200, json=[a for a in self.agents if not wanted or set(wanted) & set(a.get("tags") or [])]
        )

    def create(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.creates.append(body)
        return httpx.Response(200, json=self.add(body["name"], body["tags"]))

    def delete(self, request: httpx.Request, agent_id: str) -> httpx.Response:
        self.deleted.append(agent_id)
        self.agents = [a for a in self.agents if a["id"] != agent_id]
        return httpx.Response(200, json={"message": "deleted"})


@pytest.fixture
def table() -> Iterator[tuple[Table, respx.MockRouter]]:
    with mocked_letta() as letta:
        table = Table([dict(TEMPLATE, tags=[]), dict(AGENT, tags=[])])
        letta.get("/v1/agents/", name="agents").mock(side_effect=table.listing)
        letta.post("/v1/agents/", name="create").mock(side_effect=table.create)
        letta.get(f"/v1/agents/{TEMPLATE['id']}", name="state").mock(
            return_value=httpx.Response(200, json=TEMPLATE_STATE)
        )
        letta.delete(path__regex=r"^/v1/agents/(?P<agent_id>[^/]+)$", name="delete").mock(
            side_effect=table.delete
        )
        letta.post(path__regex=r"^/v1/agents/(?P<agent_id>[^/]+)/messages$", name="send").mock(
            return_value=httpx.Response(
                200, content=raw("send_message.json"), headers={"content-type": "application/json"}
            )
        )
        yield table, letta


def proxy(tmp_path: Path, **settings: Any) -> TestClient:
    settings.setdefault("proxy_user_agent_templates", "assistant")
    settings.setdefault("proxy_user_agent_secret", "test-secret")
    return TestClient(create_app(make_settings(tmp_path, **settings)))


def ask(client: TestClient, model: str = "assistant", **body: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **body}
    return client.post(CHAT, json=body, headers=KEY)


def sent_to(letta: respx.MockRouter) -> list[str]:
    return [call.request.url.path.split("/")[3] for call in letta["send"].calls]


def test_a_user_s_first_turn_makes_their_agent_and_goes_there(
    tmp_path: Path, table: tuple[Table, respx.MockRouter]
) -> None:
    """The template is copied once, tagged with the user's hash and the template, and the turn goes to
    the copy, answered under the template's name; the template itself gets nothing."""
    rows, letta = table
    with proxy(tmp_path) as client:
        response = ask(client, user="alice")
    assert response.status_code == 200 and response.json()["model"] == "assistant"
    tag = user_tag(b"test-secret", TEMPLATE["id"], "alice")
    [create] = rows.creates
    assert create["tags"] == [tag, f"lop-template:{TEMPLATE['id']}"]
    assert create["memory_blocks"] and create["system"] == TEMPLATE_STATE["system"]
    [own] = [a for a in rows.agents if tag in a["tags"]]
    assert sent_to(letta) == [own["id"]] and own["id"] != TEMPLATE["id"]
    include = letta["state"].calls.last.request.url.params.get_list("include")
    assert {"agent.blocks", "agent.tools", "agent.secrets"} <= set(include)


def test_the_same_user_finds_their_agent_again_and_another_user_gets_their_own(
    tmp_path: Path, table: tuple[Table, respx.MockRouter]
) -> None:
    """Found by its tag on later turns (no second copy); bob's turns go to a different agent."""
    rows, letta = table
    with proxy(tmp_path) as client:
        for user in ("alice", "alice", "bob", "alice"):
            assert ask(client, user=user).status_code == 200
    assert len(rows.creates) == 2
    alice, bob = (
        next(a["id"] for a in rows.agents if user_tag(b"test-secret", TEMPLATE["id"], u) in a["tags"])
        for u in ("alice", "bob")
    )
    assert alice != bob and sent_to(letta) == [alice, alice, bob, alice]


def test_the_open_webui_header_names_the_user_of_a_chat_turn(
    tmp_path: Path, table: tuple[Table, respx.MockRouter]
) -> None:
    """Without `user`, Open WebUI's X-OpenWebUI-User-Id names the end user: the same agent `user` reaches."""
    rows, letta = table
    body = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}]}
    with proxy(tmp_path) as client:
        by_header = client.post(CHAT, json=body, headers={**KEY, "X-OpenWebUI-User-Id": "u-1"})
        by_user = ask(client, user="u-1")
    assert by_header.status_code == by_user.status_code == 200
    [own] = sent_to(letta)[:1]
    assert sent_to(letta) == [own, own] and own != TEMPLATE["id"] and len(rows.creates) == 1


def test_a_health_check_on_a_template_makes_no_user_agent(
    tmp_path: Path, table: tuple[Table, respx.MockRouter]
) -> None:
    """LiteLLM's health checks name the template with no user: answered by the proxy, nothing made."""
    rows, letta = table
    body = {"model": "assistant", "messages": [{"role": "user", "content": "ping"}]}
    with proxy(tmp_path) as client:
        response = client.post(CHAT, json=body, headers={**KEY, "X-Letta-Proxy-Health-Check": "1"})
    assert response.status_code == 200 and response.json()["model"] == "assistant"
    assert rows.creates == [] and not letta["send"].called


def test_a_template_without_a_user_is_a_400_and_nothing_is_made_or_sent(
    tmp_path: Path, table: tuple[Table, respx.MockRouter]
) -> None:
    """No `user` for a template model: 400 naming `user`; no agent made, no turn sent anywhere."""
    rows, letta = table
    with proxy(tmp_path) as client:
        response = ask(client)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "user" and response.json()["error"]["code"] == "user_required"
    assert rows.creates == [] and not letta["send"].called


def test_other_agents_are_untouched_by_the_mode(
    tmp_path: Path, table: tuple[Table, respx.MockRouter]
) -> None:
    """An agent that is no template is talked to itself, with or without a user."""
    rows, letta = table
    with proxy(tmp_path) as client:
        assert ask(client, AGENT["name"]).status_code == 200
        assert ask(client, AGENT["name"], user="alice").status_code == 200
    assert rows.creates == [] and sent_to(letta) == [AGENT["id"], AGENT["id"]]


def test_a_template_named_by_id_works_too(tmp_path: Path, table: tuple[Table, respx.MockRouter]) -> None:
    """PROXY_USER_AGENT_TEMPLATES takes ids (which survive a rename) as well as names."""
    rows, letta = table
    with proxy(tmp_path, proxy_user_agent_templates=TEMPLATE["id"]) as client:
        assert ask(client, user="alice").status_code == 200
    assert len(rows.creates) == 1 and sent_to(letta) != [TEMPLATE["id"]]


def test_users_agents_are_never_listed_nor_reachable_directly(
    tmp_path: Path, table: tuple[Table, respx.MockRouter]
) -> None:
    """/v1/models shows the template, never a user's agent; its id or name is a 404 even for a key that
    sees every agent, and even when the template mode is off."""
    rows, letta = table
    with proxy(tmp_path) as client:
        assert ask(client, user="alice").status_code == 200
    own = next(a for a in rows.agents if a["name"].startswith("assistant-user-"))
    for settings in ({}, {"proxy_user_agent_templates": ""}):
        with proxy(tmp_path, **settings) as client:
            models = [m["id"] for m in client.get("/v1/models", headers=KEY).json()["data"]]
            assert models == ["assistant", AGENT["name"]]
            for model in (own["id"], own["name"]):
                response = ask(client, model, user="alice")
                assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    assert len(letta["send"].calls) == 1


def test_two_agents_for_one_user_converge_on_the_oldest(
    tmp_path: Path, table: tuple[Table, respx.MockRouter]
) -> None:
    """Another replica made the user's agent at the same moment: after creating, the tag lists two; the
    oldest is used and the other deleted, whatever the listing order."""
    rows, letta = table
    tag = user_tag(b"test-secret", TEMPLATE["id"], "alice")
    created = rows.create

    def raced(request: httpx.Request) -> httpx.Response:
        answer = created(request)  # listed first, though the other replica's is older
        rows.add("other-replica", [tag], agent_id="agent-zzzz")["created_at"] = "2026-01-01T00:00:00Z"
        return answer

    letta["create"].mock(side_effect=raced)
    with proxy(tmp_path) as client:
        assert ask(client, user="alice").status_code == 200
    ours = rows.creates[0]["name"]
    assert sent_to(letta) == ["agent-zzzz"]
    assert [a["name"] for a in rows.agents if tag in a["tags"]] == ["other-replica"]
    assert len(rows.deleted) == 1 and ours.startswith("assistant-user-")


def test_a_failed_create_is_a_502_and_the_next_turn_tries_again(
    tmp_path: Path, table: tuple[Table, respx.MockRouter]
) -> None:
    """Letta refusing the copy is an OpenAI-shaped 502 with no turn sent; nothing wrong is remembered, so
    the user's next turn makes their agent."""
    rows, letta = table
    letta["create"].mock(side_effect=[httpx.Response(500, json={"detail": "database is down"}), rows.create])
    with proxy(tmp_path, proxy_agent_cache_seconds=60) as client:
        failed = ask(client, user="alice")
        assert failed.status_code == 502 and failed.json()["error"]["code"] == "upstream_error"
        assert not letta["send"].called
        assert ask(client, user="alice").status_code == 200
    assert len(rows.creates) == 1 and len(letta["send"].calls) == 1


def test_an_extra_agent_already_deleted_by_another_replica_is_no_failure(
    tmp_path: Path, table: tuple[Table, respx.MockRouter]
) -> None:
    """Two replicas may both delete the same extra agent: Letta's 404 for the second is fine."""
    rows, letta = table
    tag = user_tag(b"test-secret", TEMPLATE["id"], "alice")
    rows.add("older", [tag], agent_id="agent-older")
    rows.add("younger", [tag], agent_id="agent-younger")
    letta["delete"].mock(return_value=httpx.Response(404, json={"detail": "Agent not found"}))
    with proxy(tmp_path) as client:
        assert ask(client, user="alice").status_code == 200
    assert sent_to(letta) == ["agent-older"] and letta["delete"].call_count == 1
    assert letta["delete"].calls.last.request.url.path.endswith("/agent-younger")


# --- races, on an in-memory Letta whose every call yields -------------------------------------------


@dataclass
class Shared:
    """One Letta for several replicas: agents appear when created, every call lets others run first."""

    agents: list[AgentRecord] = field(default_factory=list)
    creates: int = 0
    deletes: list[str] = field(default_factory=list)

    async def tagged(self, tag: str) -> list[AgentRecord]:
        await asyncio.sleep(0.001)
        return [a for a in self.agents if tag in a.tags]

    async def agent_state(self, agent_id: str, include: Any) -> dict[str, Any]:
        await asyncio.sleep(0.001)
        return TEMPLATE_STATE

    async def create_agent(self, body: dict[str, Any]) -> None:
        await asyncio.sleep(0.005)
        self.creates += 1
        created = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=self.creates)
        self.agents.append(
            AgentRecord(f"agent-{self.creates}", body["name"], created, "letta_v1_agent", body["tags"])
        )

    async def delete_agent(self, agent_id: str) -> None:
        await asyncio.sleep(0.001)
        self.deletes.append(agent_id)
        self.agents = [a for a in self.agents if a.id != agent_id]


def replica(letta: Shared, tmp_path: Path, locks: TurnQueue | None = None) -> UserAgents:
    """A replica's `UserAgents`: on a lock of its own (replicas without Redis), or on the given one."""
    settings = make_settings(tmp_path, proxy_user_agent_templates="assistant", proxy_agent_cache_seconds=5)
    return UserAgents(cast(Letta, letta), settings, locks or TurnQueue(settings.proxy_queue_timeout))


TEMPLATE_AGENT = Agent(TEMPLATE["id"], "assistant", 0, "letta_v1_agent")


def test_eight_concurrent_first_turns_in_one_process_make_one_agent(tmp_path: Path) -> None:
    """The per-user lock: eight lookups at once for a new user create once and all get that agent."""
    letta = Shared()
    users = replica(letta, tmp_path)

    async def main() -> list[Agent]:
        return await asyncio.gather(*(users.agent_for(TEMPLATE_AGENT, "carol") for _ in range(8)))

    found = asyncio.run(main())
    assert letta.creates == 1 and letta.deletes == [] and {a.id for a in found} == {"agent-1"}


def test_different_users_are_not_serialised_behind_each_other(tmp_path: Path) -> None:
    """The lock is per (template, user): two new users are made side by side, each their own agent."""
    letta = Shared()
    users = replica(letta, tmp_path)

    async def main() -> list[Agent]:
        return await asyncio.gather(
            users.agent_for(TEMPLATE_AGENT, "dan"), users.agent_for(TEMPLATE_AGENT, "eve")
        )

    dan, eve = asyncio.run(main())
    assert letta.creates == 2 and dan.id != eve.id


def test_replicas_racing_on_a_new_user_converge_on_one_agent(tmp_path: Path) -> None:
    """Three replicas without Redis (no shared lock) all create for one user: each lists the tag again,
    keeps the oldest, deletes the rest; every replica ends on the same agent and only it remains."""
    letta = Shared()
    replicas = [replica(letta, tmp_path) for _ in range(3)]

    async def main() -> list[Agent]:
        return await asyncio.gather(*(r.agent_for(TEMPLATE_AGENT, "frank") for r in replicas))

    found = asyncio.run(main())
    assert letta.creates == 3
    assert {a.id for a in found} == {"agent-1"} and [a.id for a in letta.agents] == ["agent-1"]


@pytest.mark.slow
def test_replicas_sharing_redis_make_a_new_user_s_agent_once(tmp_path: Path) -> None:
    """With PROXY_REDIS_URL, the find-or-create lock is the shared turn lock: three replicas racing on a
    new user create one agent, not three to be deleted down to one."""
    letta = Shared()

    async def main(url: str) -> list[Agent]:
        clients = [connect(url) for _ in range(3)]
        locks = [RedisTurns(client, timeout=10, lease_seconds=5) for client in clients]
        await locks[0].start()
        try:
            replicas = [replica(letta, tmp_path, lock) for lock in locks]
            return await asyncio.gather(*(r.agent_for(TEMPLATE_AGENT, "grace") for r in replicas))
        finally:
            for lock, client in zip(locks, clients, strict=True):
                await lock.aclose()
                await client.aclose()

    with running_redis(tmp_path) as server:
        found = asyncio.run(main(server.url))
    assert letta.creates == 1 and letta.deletes == []
    assert {a.id for a in found} == {"agent-1"}


def test_a_found_agent_is_remembered_for_the_cache_period(tmp_path: Path) -> None:
    """Within PROXY_AGENT_CACHE_SECONDS a user's agent is not looked up again."""
    letta = Shared()
    users = replica(letta, tmp_path)
    calls = 0
    tagged = letta.tagged

    async def counting(tag: str) -> list[AgentRecord]:
        nonlocal calls
        calls += 1
        return await tagged(tag)

    letta.tagged = counting  # type: ignore[method-assign]

    async def main() -> None:
        for _ in range(3):
            await users.agent_for(TEMPLATE_AGENT, "gina")

    asyncio.run(main())
    assert calls == 2  # the lookup before creating, and the one after


def test_a_user_whose_agent_was_deleted_gets_a_new_one_once_the_cache_period_is_over(tmp_path: Path) -> None:
    """Resetting a user is deleting their agent in Letta: past the cache period, their next turn makes a
    fresh copy of the template."""
    letta = Shared()
    settings = make_settings(tmp_path, proxy_user_agent_templates="assistant", proxy_agent_cache_seconds=0)
    users = UserAgents(cast(Letta, letta), settings, TurnQueue(5))

    async def main() -> tuple[Agent, Agent]:
        first = await users.agent_for(TEMPLATE_AGENT, "hal")
        letta.agents.clear()  # the operator deletes it
        return first, await users.agent_for(TEMPLATE_AGENT, "hal")

    first, second = asyncio.run(main())
    assert (first.id, second.id, letta.creates) == ("agent-1", "agent-2", 2)
