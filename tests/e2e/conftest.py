"""Fixtures for the end-to-end suite: a real Letta server, fresh agents, and the proxy as a real process.

The suite needs a reachable Letta (``LETTA_E2E_URL``, default ``http://127.0.0.1:8283``), e.g. the offline
one from ``../shared/letta-server/start.sh``. Without one the tests are skipped, unless
``PROXY_E2E_REQUIRED=1`` (set by CI), which turns the skip into a hard failure.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from letta_client import Letta
from letta_client.types import AgentState

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LETTA_URL = os.environ.get("LETTA_E2E_URL", "http://127.0.0.1:8283").rstrip("/")
REQUIRED = os.environ.get("PROXY_E2E_REQUIRED") == "1"
API_KEY = "sk-e2e-" + uuid.uuid4().hex
AGENT_MODEL = "openai-proxy/fake-model"
AGENT_EMBEDDING = "openai/text-embedding-3-small"
READY_TIMEOUT_S = 30.0


def _free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def letta_url() -> str:
    """The base URL of a healthy Letta server; skips (or fails, if required) when there is none."""
    try:
        httpx.get(f"{LETTA_URL}/v1/health/", timeout=5.0).raise_for_status()
    except httpx.HTTPError as exc:
        reason = f"no Letta server at {LETTA_URL} ({exc!r}); run ../shared/letta-server/start.sh"
        if REQUIRED:
            pytest.fail(f"PROXY_E2E_REQUIRED=1 but {reason}", pytrace=False)
        pytest.skip(reason)
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
    """Start ``python -m proxy`` as a real process against Letta; yield its base URL; stop it at the end."""
    tmp = tmp_path_factory.mktemp("proxy")
    port = _free_port()
    env = {
        **os.environ,
        "LETTA_BASE_URL": letta_url,
        "PROXY_HOST": "127.0.0.1",
        "PROXY_PORT": str(port),
        "PROXY_API_KEYS": API_KEY,
        "PROXY_API_KEY_FILE": str(tmp / "proxy-api-key.json"),
        "PROXY_LOG_LEVEL": "info",
        "PROXY_AGENT_CACHE_SECONDS": "0",  # agents created by fixtures must be visible at once
    }
    log_path = tmp / "proxy.log"
    log = log_path.open("wb")  # a file, not a pipe: an unread pipe would block the proxy once full
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy"], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"

    def fail(why: str) -> None:
        _stop(proc)
        log.close()
        pytest.fail(f"{why}; proxy output:\n{log_path.read_text(errors='replace')}", pytrace=False)

    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            fail(f"proxy exited with code {proc.returncode} before it was ready")
        try:
            r = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=2.0)
            if r.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            fail(f"proxy not ready on {url} after {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.2)

    yield url
    _stop(proc)
    log.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the proxy, then kill it if it does not exit within 10 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


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
