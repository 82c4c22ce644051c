"""End to end on the real Letta: a template agent gives each end user their own agent, with private memory.

A proxy of its own runs with PROXY_USER_AGENT_TEMPLATES naming a fresh template; every agent the tests
make through it carries the `lop-template:<id>` tag, by which they are all deleted at the end.
"""

import json
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import openai
import pytest
from letta_client import Letta
from letta_client.types import AgentState

from proxy.user_agents import user_tag
from tests.e2e.conftest import AGENT_EMBEDDING, AGENT_MODEL
from tests.e2e.letta_history import user_texts
from tests.proxy_process import ProxyProcess, running_proxy

SECRET = "e2e-" + uuid.uuid4().hex
PERSONA = "I am the team's assistant."


@dataclass
class Deployment:
    template: AgentState
    client: openai.OpenAI
    proxy: ProxyProcess


@pytest.fixture(scope="module")
def deployment(
    letta: Letta, letta_url: str, api_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """A template with its own persona, and a proxy that treats it as one (no caches, to race for real)."""
    template = letta.agents.create(
        name=f"e2e-template-{uuid.uuid4().hex[:8]}",
        model=AGENT_MODEL,
        embedding=AGENT_EMBEDDING,
        memory_blocks=[{"label": "persona", "value": PERSONA}, {"label": "human", "value": "Nothing yet."}],
    )
    env = {
        "LETTA_BASE_URL": letta_url,
        "PROXY_AGENT_CACHE_SECONDS": "0",
        "PROXY_USER_AGENT_TEMPLATES": template.id,
        "PROXY_USER_AGENT_SECRET": SECRET,
    }
    try:
        with running_proxy(tmp_path_factory.mktemp("peruser"), api_key, **env) as proxy:
            client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=api_key, max_retries=0, timeout=120.0)
            yield Deployment(template, client, proxy)
            client.close()
    finally:
        for agent in [*letta.agents.list(tags=[f"lop-template:{template.id}"], limit=100), template]:
            try:
                letta.agents.delete(agent.id)
            except Exception as exc:  # teardown must not hide the real test result
                print(f"could not delete agent {agent.id}: {exc!r}", file=sys.stderr)


def own_agents(letta: Letta, template: AgentState, user: str) -> list[AgentState]:
    """The user's agents of the template, found in Letta as an operator would: by the user's tag."""
    return list(letta.agents.list(tags=[user_tag(SECRET.encode(), template.id, user)], limit=100))


def say(deployment: Deployment, user: str, text: str, *, stream: bool = False) -> str:
    if stream:
        chunks = deployment.client.chat.completions.create(
            model=deployment.template.name,
            user=user,
            stream=True,
            messages=[{"role": "user", "content": text}],
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    answer = deployment.client.chat.completions.create(
        model=deployment.template.name, user=user, messages=[{"role": "user", "content": text}]
    )
    assert answer.model == deployment.template.name
    return answer.choices[0].message.content or ""


def made_and_deleted(deployment: Deployment) -> tuple[int, int]:
    """How many users' agents this proxy has made, and deleted as a second agent of one user, so far."""
    log = deployment.proxy.output()
    return log.count("made the agent of a new end user"), log.count("a second agent of one user")


def block(letta: Letta, agent_id: str, label: str) -> str:
    return letta.agents.blocks.retrieve(label, agent_id=agent_id).value


def test_alice_and_bob_each_get_their_own_agent_with_private_memory_and_history(
    deployment: Deployment, letta: Letta
) -> None:
    """Two users of one template: two new agents, copies of the template; each history holds only its
    user's turns, a memory edit in one is in no other, and the template's history is untouched."""
    template = deployment.template
    before = user_texts(letta, template.id)
    alice_fact, bob_fact = (
        f"alice drinks tea {uuid.uuid4().hex[:6]}",
        f"bob drinks coffee {uuid.uuid4().hex[:6]}",
    )
    remember = {"label": "human", "new_string": alice_fact, "insert_line": -1}
    turns = [
        ("alice", f"hello from alice {uuid.uuid4().hex[:6]}", False),
        ("bob", f"hello from bob {uuid.uuid4().hex[:6]}", True),
        ("alice", f"/call memory_insert {json.dumps(remember)}", False),
        ("bob", bob_fact, False),
    ]
    for user, text, stream in turns:
        assert say(deployment, user, text, stream=stream).startswith("Echo: ")
    [alice], [bob] = own_agents(letta, template, "alice"), own_agents(letta, template, "bob")
    assert len({alice.id, bob.id, template.id}) == 3
    assert user_texts(letta, alice.id) == [text for user, text, _ in turns if user == "alice"]
    assert user_texts(letta, bob.id) == [text for user, text, _ in turns if user == "bob"]
    assert user_texts(letta, template.id) == before == []
    assert alice_fact in block(letta, alice.id, "human")
    assert alice_fact not in block(letta, bob.id, "human") and alice_fact not in block(
        letta, template.id, "human"
    )
    for own in (alice, bob):
        assert block(letta, own.id, "persona") == PERSONA
        assert own.system == template.system and own.llm_config.handle == template.llm_config.handle
        assert "alice" not in own.name and "bob" not in own.name


def test_eight_concurrent_first_turns_of_a_new_user_make_one_agent(
    deployment: Deployment, letta: Letta
) -> None:
    """Fired at once for a user never seen: one agent is made (one create, none deleted), and all eight
    turns land in it, once each."""
    user = f"carol-{uuid.uuid4().hex[:6]}"
    made, extra = made_and_deleted(deployment)
    texts = [f"first {n} {uuid.uuid4().hex[:6]}" for n in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda text: say(deployment, user, text), texts))
    assert answers == [f"Echo: {text}" for text in texts]
    [own] = own_agents(letta, deployment.template, user)
    assert sorted(user_texts(letta, own.id)) == sorted(texts)
    assert made_and_deleted(deployment) == (made + 1, extra)


def test_users_agents_are_not_models_and_cannot_be_named(deployment: Deployment, letta: Letta) -> None:
    """/v1/models lists the template, not its users' agents; a user's agent by id or name is a 404."""
    say(deployment, "dora", "hi")
    [own] = own_agents(letta, deployment.template, "dora")
    models = [model.id for model in deployment.client.models.list()]
    assert deployment.template.name in models and own.name not in models and own.id not in models
    for model in (own.id, own.name):
        with pytest.raises(openai.NotFoundError):
            deployment.client.chat.completions.create(
                model=model, user="dora", messages=[{"role": "user", "content": "sneaking in"}]
            )
    assert "sneaking in" not in user_texts(letta, own.id)


def test_a_template_turn_without_a_user_is_a_400_naming_user(deployment: Deployment, letta: Letta) -> None:
    """Nobody to give the turn to: 400 `user_required` naming `user`, and no agent made."""
    made = len(list(letta.agents.list(tags=[f"lop-template:{deployment.template.id}"], limit=100)))
    with pytest.raises(openai.BadRequestError) as raised:
        deployment.client.chat.completions.create(
            model=deployment.template.name, messages=[{"role": "user", "content": "who am I?"}]
        )
    assert raised.value.body["param"] == "user" and raised.value.body["code"] == "user_required"  # type: ignore[index]
    assert len(list(letta.agents.list(tags=[f"lop-template:{deployment.template.id}"], limit=100))) == made
    assert user_texts(letta, deployment.template.id) == []


def test_the_user_id_never_reaches_the_proxy_s_log(deployment: Deployment, letta: Letta) -> None:
    """Making and using a user's agent logs the template and agent ids, never who the user is."""
    user = f"erin-{uuid.uuid4().hex}"
    say(deployment, user, "hello")
    assert own_agents(letta, deployment.template, user)
    assert "made the agent of a new end user" in deployment.proxy.output()
    assert user not in deployment.proxy.output()
