"""Shared fixtures: settings that read no environment, and a respx-mocked Letta serving real captures."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import letta_client
import pytest
import respx
from litestar.testing import TestClient

from proxy.app import create_app
from proxy.settings import Settings
from tests.letta_captures import raw, wire

LETTA = "http://letta.test"
KEY = "sk-test-key"
AGENT = wire("list_agents.json")[0]


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "letta_base_url": LETTA,
        "proxy_api_keys": KEY,
        "proxy_api_key_file": tmp_path / "key.json",
        "proxy_agent_cache_seconds": 0,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def agents_page(request: httpx.Request, agents: list[dict[str, Any]]) -> httpx.Response:
    """Letta's list endpoint: the agents, then an empty page after the last one (as the SDK paginates)."""
    return httpx.Response(200, json=[] if "after" in request.url.params else agents)


@contextmanager
def mocked_letta() -> Iterator[respx.MockRouter]:
    """respx in Letta's place. It patches httpx's own transport, so meanwhile the proxy's Letta client
    runs on that transport rather than on aiohttp's."""
    with pytest.MonkeyPatch.context() as patch, respx.mock(base_url=LETTA, assert_all_called=False) as router:
        patch.setattr("proxy.letta.client.http_client", letta_client.DefaultAsyncHttpxClient)
        yield router


@pytest.fixture
def letta() -> Iterator[respx.MockRouter]:
    """A mocked Letta with the captured agent, answering turns with the captured sync response."""
    with mocked_letta() as router:
        router.get("/v1/agents/", name="agents").mock(
            side_effect=lambda request: agents_page(request, [AGENT])
        )
        router.post(f"/v1/agents/{AGENT['id']}/messages", name="send").mock(
            return_value=httpx.Response(
                200, content=raw("send_message.json"), headers={"content-type": "application/json"}
            )
        )
        yield router


@pytest.fixture
def client(tmp_path: Path, letta: respx.MockRouter) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path))) as test_client:
        test_client.headers["Authorization"] = f"Bearer {KEY}"
        yield test_client


def sse(name: str) -> httpx.Response:
    return httpx.Response(200, content=raw(name), headers={"content-type": "text/event-stream"})
