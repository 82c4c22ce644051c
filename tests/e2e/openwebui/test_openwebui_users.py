"""Open WebUI with a login and two accounts, in front of the proxy with a template agent: each account
chats through Open WebUI itself and gets an agent of its own, copied from the template (issue #14).

Open WebUI (pinned, tests/e2e/openwebui/openwebui.py) runs with WEBUI_AUTH on and forwards who the user is
(X-OpenWebUI-User-Id); the proxy makes each user's agent from that. The test talks to Open WebUI's own
API, as its page does: sign-up (the first account is its admin), the admin adding a second account, and
each account's token on /api/chat/completions. Then it reads what Letta holds.
"""

import secrets
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from letta_client import Letta
from letta_client.types import AgentState

from proxy.letta.agents import USER_AGENT_TAG
from proxy.user_agents import TEMPLATE_TAG, user_tag
from tests.e2e.conftest import API_KEY
from tests.e2e.letta_history import user_texts
from tests.e2e.openwebui.openwebui import running_openwebui
from tests.proxy_process import running_proxy

pytestmark = pytest.mark.slow

RUN = uuid.uuid4().hex[:6]
SECRET = secrets.token_hex(16)
TIMEOUT = 120.0  # one request to Open WebUI: a first turn copies the template, on two busy cores


@pytest.fixture(scope="module")
def template(openwebui_installed: None, make_agent: Callable[[], AgentState]) -> AgentState:
    """A fresh agent, named as the proxy's template."""
    return make_agent()


@pytest.fixture(scope="module")
def user_agents(letta: Letta, template: AgentState) -> Iterator[Callable[[], list[AgentState]]]:
    """What Letta holds as the template's users' agents; all of them deleted at the end."""

    def listed() -> list[AgentState]:
        return list(
            letta.agents.list(tags=[f"{TEMPLATE_TAG}{template.id}"], include=["agent.tags"], limit=50)
        )

    yield listed
    for agent in listed():
        letta.agents.delete(agent.id)


@pytest.fixture(scope="module")
def users_proxy(
    letta_url: str, template: AgentState, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The proxy as a real process, the template its one model, one agent per user of it."""
    try:
        with running_proxy(
            tmp_path_factory.mktemp("users-proxy"),
            f"{API_KEY}:{template.name}",
            LETTA_BASE_URL=letta_url,
            PROXY_AGENT_CACHE_SECONDS="0",
            PROXY_USER_AGENT_TEMPLATES=template.name,
            PROXY_USER_AGENT_SECRET=SECRET,
        ) as proxy:
            yield proxy.url
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="module")
def webui(users_proxy: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A client of Open WebUI with its login on, forwarding its users to the proxy, data in a temp dir.

    A model no admin has registered is visible to admins only; BYPASS_MODEL_ACCESS_CONTROL lets a plain
    user reach the proxy's models as they are listed."""
    try:
        with running_openwebui(
            tmp_path_factory.mktemp("openwebui-users") / "data",
            f"{users_proxy}/v1",
            API_KEY,
            WEBUI_AUTH="True",
            BYPASS_MODEL_ACCESS_CONTROL="true",
        ) as url:
            with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
                yield client
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)


def account(
    webui: httpx.Client, path: str, name: str, token: str | None = None, **extra: str
) -> dict[str, Any]:
    """An Open WebUI account made by `path` (sign-up, or an admin's add): its id and session token."""
    body = {"name": name, "email": f"{name.lower()}-{RUN}@example.com", "password": secrets.token_urlsafe(16)}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = webui.post(path, json={**body, **extra}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def chat(webui: httpx.Client, token: str, model: str, text: str) -> str:
    """One turn through Open WebUI's own chat endpoint, as that user; the answer's text."""
    headers = {"Authorization": f"Bearer {token}"}
    models = webui.get("/api/models", headers=headers)  # as the page does: Open WebUI loads its model list
    assert model in [m["id"] for m in models.json()["data"]], models.text
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": False}
    response = webui.post("/api/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def test_each_account_gets_its_own_agent(
    webui: httpx.Client,
    letta: Letta,
    template: AgentState,
    user_agents: Callable[[], list[AgentState]],
) -> None:
    admin = account(webui, "/api/v1/auths/signup", "Ada")  # the first account is Open WebUI's admin
    user = account(webui, "/api/v1/auths/add", "Bob", admin["token"], role="user")
    assert (admin["role"], user["role"]) == ("admin", "user")
    said = {admin["id"]: f"Ada {RUN} here", user["id"]: f"Bob {RUN} here"}

    for person in (admin, user):
        text = said[person["id"]]
        assert chat(webui, person["token"], template.name, text) == f"Echo: {text}"

    assert user_texts(letta, template.id) == [], "the template itself was sent a turn"
    agents = user_agents()
    assert len(agents) == 2, f"expected one agent per Open WebUI user, Letta holds {[a.name for a in agents]}"
    histories = {}
    for agent in agents:
        (tag,) = [t for t in agent.tags if t.startswith(USER_AGENT_TAG)]
        histories[tag] = user_texts(letta, agent.id)
    # each agent is found by the tag of its Open WebUI user's id, and holds that user's message only
    expected = {user_tag(SECRET.encode(), template.id, person): [text] for person, text in said.items()}
    assert histories == expected
