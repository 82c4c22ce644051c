"""End to end: clients that leave, or stop reading, never hold an agent, in front of the real Letta.

A stream's client that stops reading only holds anything once the server's buffers are full (about
3 MiB of kernel buffers and a few MiB in Granian on loopback). To get there within a second, some
agents here have a long name: the name is the `model` of every chunk, so each token's chunk is 3 KiB.
"""

import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest
from letta_client import Letta
from letta_client.types import AgentState

from tests.e2e.letta_history import runs, user_texts
from tests.proxy_process import ProxyProcess, running_proxy

pytestmark = pytest.mark.slow
ACTIVE = {"created", "running"}  # a whole turn's run stays "created" until it ends
STALL_SECONDS = 3.0
LONG_STREAM = " ".join(f"word{i}" for i in range(20_000))  # echoed token by token: about 9 s of Letta's time
# A whole turn of two steps (a conversation_search, then the answer) that Letta works on for about 2 s:
# Letta checks for a cancellation between steps, and records the run's end over a cancellation mid-step.
LONG_TURN = "/tool " + " ".join(f"word{i}" for i in range(120_000))


@pytest.fixture(scope="module")
def proxy(letta_url: str, api_key: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """The proxy with a short stall limit, a queue wait longer than any test, and room for long turns."""
    with running_proxy(
        tmp_path_factory.mktemp("gone"),
        api_key,
        LETTA_BASE_URL=letta_url,
        PROXY_AGENT_CACHE_SECONDS="0",
        PROXY_STALL_SECONDS=str(STALL_SECONDS),
        PROXY_QUEUE_TIMEOUT="30",
        PROXY_MAX_TEXT_CHARS="5000000",
    ) as running:
        yield running


@pytest.fixture
def wide_agent(letta: Letta) -> Iterator[AgentState]:
    """A fresh agent with a 3,000-character name, deleted afterwards."""
    agent = letta.agents.create(
        name=f"e2e-{uuid.uuid4().hex[:8]}-" + "w" * 3000,
        model="openai-proxy/fake-model",
        embedding="openai/text-embedding-3-small",
    )
    yield agent
    letta.agents.delete(agent.id)


def _body(agent: AgentState, text: str, stream: bool) -> dict[str, object]:
    return {"model": agent.name, "stream": stream, "messages": [{"role": "user", "content": text}]}


def _unread_stream(proxy: ProxyProcess, key: str, body: dict[str, object]) -> socket.socket:
    """A streamed turn on a raw socket with a small receive buffer: the head read, then nothing."""
    address = urlsplit(proxy.url)
    payload = json.dumps(body).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect((address.hostname, address.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (key.encode(), len(payload), payload)
    )
    assert sock.recv(16).startswith(b"HTTP/1.1 200")
    return sock


def _statuses(letta: Letta, agent: AgentState) -> list[str | None]:
    return [run.status for run in runs(letta, agent.id)]


def _settled(letta: Letta, agent: AgentState, seconds: float = 20) -> list[str | None]:
    """The agent's run statuses once none is active (or as they are after `seconds`)."""
    deadline = time.monotonic() + seconds
    while (statuses := _statuses(letta, agent)) and ACTIVE & set(statuses) and time.monotonic() < deadline:
        time.sleep(0.25)
    return statuses


def _turn(proxy: ProxyProcess, key: str, agent: AgentState, text: str, timeout: float = 30) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(
        f"{proxy.url}/v1/chat/completions", json=_body(agent, text, False), headers=headers, timeout=timeout
    )


def _served_at_once(proxy: ProxyProcess, key: str, agent: AgentState) -> None:
    """The agent's next turn is answered in seconds, not after the queue's 30 s wait (nor with a 429)."""
    started = time.monotonic()
    response = _turn(proxy, key, agent, "next")
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Echo: next"
    assert time.monotonic() - started < 10


def test_a_client_leaving_mid_stream_cancels_the_agent_run(
    proxy_url: str, api_key: str, letta: Letta, make_agent: Callable[[], AgentState]
) -> None:
    """The proxy stops reading Letta and cancels the run, so the agent does no work for nobody."""
    agent = make_agent()
    long_answer = " ".join(f"word{i}" for i in range(3000))  # echoed token by token: a run of seconds
    body = {"model": agent.name, "stream": True, "messages": [{"role": "user", "content": long_answer}]}
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.stream(
        "POST", f"{proxy_url}/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as r:
        assert r.status_code == 200
        assert next(r.iter_lines()).startswith("data: {")  # the run has started; now leave
    assert _settled(letta, agent) == ["cancelled"]


def test_a_client_that_stops_reading_then_leaves_frees_the_agent_at_once(
    proxy: ProxyProcess, api_key: str, letta: Letta, wide_agent: AgentState
) -> None:
    """Its stream is closed as it leaves, not by the garbage collector: run cancelled, agent freed."""
    sock = _unread_stream(proxy, api_key, _body(wide_agent, LONG_STREAM, True))
    time.sleep(2)  # Letta streams on until the buffers are full, then waits on the proxy
    assert _statuses(letta, wide_agent) == ["running"]
    sock.close()  # with unread bytes: a reset, as a client killed mid-stream sends
    assert _settled(letta, wide_agent)[0] == "cancelled"
    _served_at_once(proxy, api_key, wide_agent)


def test_a_client_that_stops_reading_is_dropped_after_the_stall_limit(
    proxy: ProxyProcess, api_key: str, letta: Letta, wide_agent: AgentState
) -> None:
    """PROXY_STALL_SECONDS after a write stopped going out, the stream is dropped though its client stays."""
    sock = _unread_stream(proxy, api_key, _body(wide_agent, LONG_STREAM, True))
    try:
        time.sleep(2)
        assert _statuses(letta, wide_agent) == ["running"]
        assert _settled(letta, wide_agent, seconds=STALL_SECONDS + 10)[0] == "cancelled"
        _served_at_once(proxy, api_key, wide_agent)
        assert "stream dropped" in proxy.output() and "word1" not in proxy.output()  # no message text
    finally:
        sock.close()


def test_a_turn_whose_client_leaves_while_queued_never_reaches_letta(
    proxy: ProxyProcess, api_key: str, letta: Letta, make_agent: Callable[[], AgentState]
) -> None:
    """A turn waiting behind a long one, given up by its client (an SDK's timeout), is not sent afterwards."""
    agent = make_agent()
    ghost, after = f"ghost-{uuid.uuid4().hex[:8]}", f"after-{uuid.uuid4().hex[:8]}"
    headers = {"Authorization": f"Bearer {api_key}"}

    def long_turn() -> bytes:
        body = _body(agent, " ".join(f"word{i}" for i in range(6000)), True)  # about 3 s
        with httpx.stream(
            "POST", f"{proxy.url}/v1/chat/completions", json=body, headers=headers, timeout=60
        ) as r:
            return r.read()

    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(long_turn)
        deadline = time.monotonic() + 10
        while _statuses(letta, agent) != ["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(httpx.ReadTimeout):
            _turn(proxy, api_key, agent, ghost, timeout=1)  # queued; the client gives up after 1 s
        assert not holder.done()  # the ghost was still queued when its client left
        assert holder.result(timeout=60).endswith(b"data: [DONE]\n\n")
    assert _turn(proxy, api_key, agent, after).status_code == 200
    texts = user_texts(letta, agent.id)
    assert after in texts and ghost not in texts


def test_a_whole_turn_whose_client_leaves_gets_its_run_cancelled(
    proxy: ProxyProcess, api_key: str, letta: Letta, make_agent: Callable[[], AgentState]
) -> None:
    """The proxy cancels the run Letta is working on, then frees the agent for the next turn."""
    agent = make_agent()
    with pytest.raises(httpx.ReadTimeout):
        _turn(proxy, api_key, agent, LONG_TURN, timeout=0.5)
    assert _settled(letta, agent) == ["cancelled"]
    _served_at_once(proxy, api_key, agent)
