"""Fixtures for the end-to-end suite: a real Letta server, fresh agents, and the proxy as a real process.

The suite needs a reachable Letta (``LETTA_E2E_URL``, default ``http://127.0.0.1:8283``), e.g. the offline
one from ``../shared/letta-server/start.sh``. Without one the tests are skipped, unless
``PROXY_E2E_REQUIRED=1`` (set by CI), which turns the skip into a hard failure.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
from letta_client import Letta
from letta_client.types import AgentState

from tests.proxy_process import running_proxy
from tests.required import unavailable

LETTA_URL = os.environ.get("LETTA_E2E_URL", "http://127.0.0.1:8283").rstrip("/")
API_KEY = "sk-e2e-" + uuid.uuid4().hex
AGENT_MODEL = "openai-proxy/fake-model"
AGENT_EMBEDDING = "openai/text-embedding-3-small"
# The client tool the tool tests offer; the fake LLM calls it for a user text `/call get_weather {...}`.
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every end-to-end test runs real processes: none belongs in the fast loop."""
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def letta_url() -> str:
    """The base URL of a healthy Letta server; skips (or fails, if required) when there is none."""
    try:
        httpx.get(f"{LETTA_URL}/v1/health/", timeout=5.0).raise_for_status()
    except httpx.HTTPError as exc:
        reason = (
            f"no Letta server at {LETTA_URL} ({exc.__class__.__name__}); start one there, or point "
            "LETTA_E2E_URL at one (the project's CI uses the offline server of its shared material)"
        )
        unavailable(reason)
    return LETTA_URL


@pytest.fixture(scope="session")
def letta(letta_url: str) -> Iterator[Letta]:
    """A letta-client talking straight to Letta, for set-up and inspection (never through the proxy)."""
    client = Letta(base_url=letta_url, timeout=60.0)
    yield client
    client.close()


@pytest.fixture(scope="session")
def make_agent(letta: Letta) -> Iterator[Callable[[], AgentState]]:
    """A factory of fresh, uniquely named agents (``e2e-<uuid8>``), all deleted at session end."""
    created: list[AgentState] = []

    def make() -> AgentState:
        agent = letta.agents.create(
            name=f"e2e-{uuid.uuid4().hex[:8]}", model=AGENT_MODEL, embedding=AGENT_EMBEDDING
        )
        created.append(agent)
        return agent

    yield make
    for agent in created:
        try:
            letta.agents.delete(agent.id)
        except Exception as exc:  # teardown must not hide the real test result
            print(f"could not delete agent {agent.name} ({agent.id}): {exc!r}", file=sys.stderr)


@pytest.fixture(scope="session")
def agent(make_agent: Callable[[], AgentState]) -> AgentState:
    """One fresh agent shared by the tests that do not inspect its history."""
    return make_agent()


@pytest.fixture(scope="session")
def proxy_url(letta_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m proxy`` as a real process against Letta, for the whole session."""
    tmp = tmp_path_factory.mktemp("proxy")
    try:
        # agents created by fixtures must be visible at once, hence no agent cache
        with running_proxy(tmp, API_KEY, LETTA_BASE_URL=letta_url, PROXY_AGENT_CACHE_SECONDS="0") as proxy:
            yield proxy.url
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def api_key() -> str:
    """The key the proxy under test accepts."""
    return API_KEY


@pytest.fixture(scope="session")
def client(proxy_url: str) -> Iterator[openai.OpenAI]:
    """The real OpenAI SDK pointed at the proxy, with retries off so errors surface as they are."""
    c = openai.OpenAI(base_url=f"{proxy_url}/v1", api_key=API_KEY, max_retries=0, timeout=120.0)
    yield c
    c.close()
