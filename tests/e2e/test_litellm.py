"""End to end: LiteLLM in front of the proxy (a real process), in front of a real Letta.

LiteLLM is used twice, both times with our proxy as an ``openai/<agent>`` upstream (``api_base`` = our
``/v1``, ``api_key`` = our key): as the Python library (``litellm.completion``, its ``Router`` and the
health-check code of its proxy, in this process), and as the LiteLLM proxy server, a real ``litellm
--config`` process started from ``deploy/litellm/config.yaml`` and spoken to with the real ``openai`` SDK.

LiteLLM's health checks send a real chat prompt ("Hey how's it going?" or "What's 1 + 1?", ``max_tokens``
16) to every deployment. The example config adds the header ``X-Letta-Proxy-Health-Check: 1`` to health
checks only (``model_info.health_check_params.extra_headers``); the proxy answers such a request itself,
after checking the key and that the agent exists, so no message ever reaches the agent.

Skipped, saying why, without a Letta server (as the rest of ``tests/e2e``) or without ``litellm`` (the
server tests also need its ``[proxy]`` extra); with ``PROXY_E2E_REQUIRED=1`` a skip is a failure.
LiteLLM is kept offline: the ``LITELLM_LOCAL_*`` variables make it use the copies it ships of what it
would otherwise fetch from GitHub or its docs site (first of all the model cost map, at import).
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import openai
import pytest
from letta_client import Letta
from letta_client.types import AgentState

from tests.e2e.conftest import WEATHER
from tests.e2e.letta_history import runs, user_texts
from tests.required import unavailable

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = PROJECT_ROOT / "deploy" / "litellm" / "config.yaml"

HEALTH_HEADER = "X-Letta-Proxy-Health-Check"
# What LiteLLM's health check sends (litellm/proxy/health_check.py, _get_random_llm_message).
HEALTH_PROMPTS = ("Hey how's it going?", "What's 1 + 1?")
# Without these LiteLLM fetches its model cost map from GitHub at import (3 attempts, then its local copy),
# and its server fetches blog posts, Anthropic beta headers, router presets and policy templates.
OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
}
# Importing LiteLLM's proxy takes 30-60 s on a busy 2-core machine.
SERVER_START_TIMEOUT_S = float(os.environ.get("LITELLM_E2E_START_TIMEOUT", "150"))
HEALTH_CYCLE_TIMEOUT_S = 90.0


def _marker() -> str:
    return uuid.uuid4().hex[:10]


def _letta_usage(letta: Letta, agent_id: str) -> tuple[int, int, int]:
    """Letta's own token count for the agent's newest run."""
    usage = letta.runs.usage.retrieve(runs(letta, agent_id)[-1].id)
    return usage.prompt_tokens, usage.completion_tokens, usage.total_tokens


def _usage_tuple(usage: Any) -> tuple[int, int, int]:
    if isinstance(usage, dict):
        return usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]
    return usage.prompt_tokens, usage.completion_tokens, usage.total_tokens


def _assert_usage(usage: Any) -> tuple[int, int, int]:
    assert usage is not None, "no usage"
    prompt, completion, total = _usage_tuple(usage)
    assert prompt > 0 and completion > 0
    assert total == prompt + completion
    return prompt, completion, total


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _resolve_env(value: Any, env: dict[str, str]) -> Any:
    """LiteLLM's ``os.environ/NAME`` config values, resolved from ``env`` as its proxy does on load."""
    if isinstance(value, dict):
        return {k: _resolve_env(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, env) for v in value]
    if isinstance(value, str) and value.startswith("os.environ/"):
        return env[value.removeprefix("os.environ/")]
    return value


def _example_config() -> dict[str, Any]:
    import yaml  # a dependency of litellm, imported once litellm is known to be there

    return yaml.safe_load(EXAMPLE_CONFIG.read_text())


def _deployment(template: dict[str, Any], agent_name: str) -> dict[str, Any]:
    """The example config's model entry, for another agent: everything else kept as shipped."""
    entry = copy.deepcopy(template)
    entry["model_name"] = agent_name
    entry["litellm_params"]["model"] = f"openai/{agent_name}"
    return entry


def _example_model_list(agent_names: list[str], proxy_url: str, api_key: str) -> list[dict[str, Any]]:
    """The example config's model entry, once per agent, with its ``os.environ/`` values filled in."""
    template = _example_config()["model_list"][0]
    env = {"LETTA_PROXY_API_BASE": f"{proxy_url}/v1", "LETTA_PROXY_API_KEY": api_key}
    return [_resolve_env(_deployment(template, name), env) for name in agent_names]


# ---------------------------------------------------------------- what LiteLLM receives from the proxy


@dataclass
class Exchange:
    request: httpx.Request
    status: int
    headers: httpx.Headers
    body: bytearray = field(default_factory=bytearray)

    def json(self) -> Any:
        assert "content-encoding" not in self.headers, (
            "the recorder keeps raw bytes: compressed bodies unsupported"
        )
        return json.loads(bytes(self.body))

    def sse_payloads(self) -> list[Any]:
        """The JSON payloads of a ``text/event-stream`` body, ``[DONE]`` left out."""
        payloads = []
        for frame in bytes(self.body).decode().replace("\r\n", "\n").split("\n\n"):
            data = "".join(line[len("data: ") :] for line in frame.split("\n") if line.startswith("data: "))
            if data and data != "[DONE]":
                payloads.append(json.loads(data))
        return payloads


@dataclass
class Wire:
    """Every HTTP exchange LiteLLM's in-process clients have, bytes as received, in order."""

    exchanges: list[Exchange] = field(default_factory=list)

    def record(self, request: httpx.Request, response: httpx.Response) -> bytearray:
        exchange = Exchange(request, response.status_code, response.headers)
        self.exchanges.append(exchange)
        return exchange.body

    def clear(self) -> None:
        self.exchanges.clear()

    def chats(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.request.url.path.endswith("/chat/completions")]

    def last_chat(self) -> Exchange:
        chats = self.chats()
        assert chats, "LiteLLM sent no chat completion through its httpx session"
        return chats[-1]


class _TeeStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, sink: bytearray) -> None:
        self._inner, self._sink = inner, sink

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._sink.extend(chunk)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class _AsyncTeeStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, sink: bytearray) -> None:
        self._inner, self._sink = inner, sink

    async def __aiter__(self):
        async for chunk in self._inner:
            self._sink.extend(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _TeeTransport(httpx.HTTPTransport):
    def __init__(self, wire: Wire) -> None:
        super().__init__()
        self._wire = wire

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        sink = self._wire.record(request, response)
        response.stream = _TeeStream(response.stream, sink)  # type: ignore[arg-type]
        return response


class _AsyncTeeTransport(httpx.AsyncHTTPTransport):
    def __init__(self, wire: Wire) -> None:
        super().__init__()
        self._wire = wire

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        sink = self._wire.record(request, response)
        response.stream = _AsyncTeeStream(response.stream, sink)  # type: ignore[arg-type]
        return response


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def wire() -> Wire:
    return Wire()


@pytest.fixture(scope="session")
def litellm(letta_url: str, wire: Wire) -> Iterator[ModuleType]:
    """The ``litellm`` package, offline, its sync OpenAI clients on an httpx session that records the wire
    (async ones: ``_run_async``). Asks for Letta first: without one the skip says so, before a slow import.
    """
    os.environ.update(OFFLINE_ENV)
    try:
        import litellm as module
    except ImportError as exc:
        unavailable(f"litellm is not importable ({exc}); it belongs in the project's dev dependency group")
    module.suppress_debug_info = True
    session = httpx.Client(transport=_TeeTransport(wire), timeout=120.0)
    module.client_session = session
    module.in_memory_llm_clients_cache.flush_cache()  # no OpenAI client built before the session was set
    yield module
    module.client_session = None
    module.in_memory_llm_clients_cache.flush_cache()
    session.close()


def _run_async(litellm: ModuleType, wire: Wire, make: Callable[[], Any]) -> Any:
    """Runs ``make()`` in a new event loop, LiteLLM's async OpenAI clients on a recording session of that loop
    (an httpx.AsyncClient's connections cannot outlive the loop they were made in)."""

    async def main() -> Any:
        session = httpx.AsyncClient(transport=_AsyncTeeTransport(wire), timeout=120.0)
        litellm.aclient_session = session
        litellm.in_memory_llm_clients_cache.flush_cache()
        try:
            return await make()
        finally:
            litellm.aclient_session = None
            litellm.in_memory_llm_clients_cache.flush_cache()
            await session.aclose()

    return asyncio.run(main())


@pytest.fixture(scope="session")
def broken_agent(make_agent: Callable[[], AgentState], letta: Letta) -> AgentState:
    """An agent whose LLM endpoint is a closed loopback port: every turn fails in Letta (proxy: 502)."""
    agent = make_agent()
    llm_config = agent.llm_config.model_dump()
    llm_config["model_endpoint"] = f"http://127.0.0.1:{_free_port()}/v1"
    return letta.agents.update(agent.id, llm_config=llm_config)


def _complete(litellm: ModuleType, proxy_url: str, api_key: str, agent_name: str, text: str, **kwargs: Any):
    kwargs.setdefault("messages", [{"role": "user", "content": text}])
    return litellm.completion(
        model=f"openai/{agent_name}", api_base=f"{proxy_url}/v1", api_key=api_key, **kwargs
    )


def _content_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def _chunk_usage(chunks: list[Any]) -> Any:
    usages = [u for c in chunks if (u := getattr(c, "usage", None)) is not None]
    assert len(usages) == 1, f"expected one usage chunk, got {len(usages)}"
    return usages[0]


# ---------------------------------------------------------------- the library


def test_library_sync(
    litellm: ModuleType, wire: Wire, proxy_url: str, api_key: str, agent: AgentState, letta: Letta
):
    """litellm.completion: the agent's answer, finish_reason stop, and exactly the usage the proxy sent."""
    text = f"hello litellm {_marker()}"
    wire.clear()
    resp = _complete(litellm, proxy_url, api_key, agent.name, text)
    assert resp.model == agent.name
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == f"Echo: {text}"
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls
    usage = _assert_usage(resp.usage)

    sent = wire.last_chat()
    assert sent.status == 200
    assert usage == _usage_tuple(sent.json()["usage"])
    assert usage == _letta_usage(letta, agent.id)
    assert any(text in t for t in user_texts(letta, agent.id))


def test_library_stream(litellm: ModuleType, wire: Wire, proxy_url: str, api_key: str, agent: AgentState):
    """stream=True with include_usage: the content in pieces, one usage chunk equal to the proxy's."""
    text = f"stream through litellm {_marker()}"
    wire.clear()
    chunks = list(
        _complete(
            litellm, proxy_url, api_key, agent.name, text, stream=True, stream_options={"include_usage": True}
        )
    )
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1, f"content was not streamed in pieces: {pieces!r}"
    assert "".join(pieces) == f"Echo: {text}"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage = _assert_usage(_chunk_usage(chunks))

    sent = wire.last_chat()
    assert sent.headers["content-type"].startswith("text/event-stream")
    assert json.loads(sent.request.content)["stream_options"] == {"include_usage": True}
    proxy_usage = [p["usage"] for p in sent.sse_payloads() if p.get("usage")]
    assert [usage] == [_usage_tuple(u) for u in proxy_usage]

    rebuilt = litellm.stream_chunk_builder(chunks)
    assert rebuilt.choices[0].message.content == f"Echo: {text}"
    assert _usage_tuple(rebuilt.usage) == usage


def test_library_stream_without_usage_option(
    litellm: ModuleType, proxy_url: str, api_key: str, agent: AgentState
):
    """A stream without stream_options still assembles; LiteLLM then adds no usage chunk of its own."""
    text = f"no usage option {_marker()}"
    chunks = list(_complete(litellm, proxy_url, api_key, agent.name, text, stream=True))
    assert _content_of(chunks) == f"Echo: {text}"
    assert all(getattr(c, "usage", None) is None for c in chunks)


def test_library_async(litellm: ModuleType, wire: Wire, proxy_url: str, api_key: str, agent: AgentState):
    """litellm.acompletion, whole and streamed, gives the same answers and the proxy's usage."""
    first, second = f"async whole {_marker()}", f"async stream {_marker()}"

    async def turns() -> tuple[Any, list[Any]]:
        common = {"model": f"openai/{agent.name}", "api_base": f"{proxy_url}/v1", "api_key": api_key}
        whole = await litellm.acompletion(messages=[{"role": "user", "content": first}], **common)
        stream = await litellm.acompletion(
            messages=[{"role": "user", "content": second}],
            stream=True,
            stream_options={"include_usage": True},
            **common,
        )
        return whole, [chunk async for chunk in stream]

    wire.clear()
    whole, chunks = _run_async(litellm, wire, turns)
    assert whole.choices[0].message.content == f"Echo: {first}"
    assert _content_of(chunks) == f"Echo: {second}"
    sent_whole, sent_stream = wire.chats()[-2:]
    assert _assert_usage(whole.usage) == _usage_tuple(sent_whole.json()["usage"])
    proxy_usage = next(p["usage"] for p in sent_stream.sse_payloads() if p.get("usage"))
    assert _assert_usage(_chunk_usage(chunks)) == _usage_tuple(proxy_usage)


@pytest.mark.parametrize("stream", [False, True], ids=["sync", "stream"])
def test_library_unknown_agent_is_not_found(litellm: ModuleType, proxy_url: str, api_key: str, stream: bool):
    """An unknown agent is litellm.NotFoundError (404) carrying the proxy's message, streamed or not."""
    name = f"no-such-agent-{_marker()}"
    with pytest.raises(litellm.NotFoundError) as exc:
        resp = _complete(litellm, proxy_url, api_key, name, "hi", stream=stream)
        if stream:
            list(resp)
    assert exc.value.status_code == 404
    assert isinstance(exc.value, openai.NotFoundError)
    assert f"The model '{name}' does not exist" in str(exc.value)


def test_library_wrong_key_is_authentication_error(litellm: ModuleType, proxy_url: str, agent: AgentState):
    """A wrong key is litellm.AuthenticationError (401), as LiteLLM callers and its router expect.

    LiteLLM classifies OpenAI-style errors by their text before their status: any body containing
    ``invalid_request_error`` (but not OpenAI's "Incorrect API key provided") becomes BadRequestError,
    whatever the status. So the proxy's 401 must not be typed ``invalid_request_error``
    (``authentication_error`` maps to AuthenticationError).
    """
    with pytest.raises(openai.APIStatusError) as exc:
        _complete(litellm, proxy_url, "sk-wrong", agent.name, "hi")
    assert exc.value.status_code == 401
    assert isinstance(exc.value, litellm.AuthenticationError), f"{type(exc.value).__name__}: {exc.value}"


def test_library_own_tool_call_is_not_a_tool_call(
    litellm: ModuleType, wire: Wire, proxy_url: str, api_key: str, agent: AgentState
):
    """A /tool turn: the agent's own call (Letta ran it) is reasoning_content, so LiteLLM, which rewrites
    "stop" to "tool_calls" whenever an answer carries tool calls, no longer tells its caller to run it."""
    wire.clear()
    resp = _complete(litellm, proxy_url, api_key, agent.name, "/tool litellm", tools=[WEATHER])
    message = resp.choices[0].message
    assert message.content == "Echo: /tool litellm"
    assert not message.tool_calls
    assert resp.choices[0].finish_reason == "stop"
    assert (
        "Tool call conversation_search"
        in wire.last_chat().json()["choices"][0]["message"]["reasoning_content"]
    )
    _assert_usage(resp.usage)


@pytest.mark.parametrize("stream", [False, True], ids=["sync", "stream"])
def test_library_client_tool_loop(
    litellm: ModuleType, proxy_url: str, api_key: str, agent: AgentState, stream: bool
):
    """litellm.completion with tools: the agent's call comes back as tool_calls, the caller's result goes
    back as a tool message, and the agent's answer quotes it."""
    text = f'/call get_weather {{"city": "Quito-{_marker()}"}}'
    messages: list[Any] = [{"role": "user", "content": text}]

    def ask() -> Any:
        resp = _complete(
            litellm, proxy_url, api_key, agent.name, "", tools=[WEATHER], stream=stream, messages=messages
        )
        return litellm.stream_chunk_builder(list(resp), messages=messages) if stream else resp

    first = ask()
    assert first.choices[0].finish_reason == "tool_calls"
    (call,) = first.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"].startswith(
        "Quito-"
    )
    messages += [
        first.choices[0].message.model_dump(),
        {"role": "tool", "tool_call_id": call.id, "content": "hail"},
    ]
    answer = ask().choices[0].message.content
    assert answer.startswith(f"Echo: {text} | get_weather returned: ") and "hail" in answer


# ---------------------------------------------------------------- the health-check probe, library level


def test_probe_header_is_answered_without_the_agent(
    litellm: ModuleType,
    wire: Wire,
    proxy_url: str,
    api_key: str,
    letta: Letta,
    make_agent: Callable[[], AgentState],
):
    """A request carrying the probe header, shaped as LiteLLM's health check, never reaches the agent."""
    agent = make_agent()
    for stream in (False, True):
        wire.clear()
        resp = _complete(
            litellm,
            proxy_url,
            api_key,
            agent.name,
            HEALTH_PROMPTS[1],
            max_tokens=16,
            stream=stream,
            extra_headers={HEALTH_HEADER: "1"},
        )
        assert wire.last_chat().request.headers[HEALTH_HEADER] == "1"
        assert wire.last_chat().status == 200
        if stream:
            chunks = list(resp)
            content = _content_of(chunks)
            finishes = [
                c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
            ]
            assert finishes == ["stop"]
        else:
            content = resp.choices[0].message.content
            assert resp.choices[0].finish_reason == "stop"
            assert resp.model == agent.name
        assert not (content or "").startswith("Echo:"), "the probe reached the agent"
    assert user_texts(letta, agent.id) == []
    assert runs(letta, agent.id) == []


def test_probe_header_still_checks_key_and_agent(litellm: ModuleType, proxy_url: str, api_key: str):
    """The probe proves something: a wrong key is still 401, an unknown agent still 404."""
    with pytest.raises(openai.APIStatusError) as exc:
        _complete(litellm, proxy_url, "sk-wrong", "anything", "hi", extra_headers={HEALTH_HEADER: "1"})
    assert exc.value.status_code == 401
    name = f"no-such-agent-{_marker()}"
    with pytest.raises(litellm.NotFoundError) as exc:
        _complete(litellm, proxy_url, api_key, name, "hi", extra_headers={HEALTH_HEADER: "1"})
    assert f"The model '{name}' does not exist" in str(exc.value)


def test_example_config_health_check_in_process(
    litellm: ModuleType,
    wire: Wire,
    proxy_url: str,
    api_key: str,
    letta: Letta,
    make_agent: Callable[[], AgentState],
):
    """LiteLLM's own health-check code on the example config's entry: healthy, nothing reaches the agent;
    real traffic on the same entry afterwards carries no probe header and reaches the agent."""
    if importlib.util.find_spec("fastapi") is None:
        unavailable("litellm's health check needs its [proxy] extra (fastapi is missing)")
    from litellm.proxy.health_check import perform_health_check

    agent = make_agent()
    ghost = f"no-such-agent-{_marker()}"
    router = litellm.Router(model_list=_example_model_list([agent.name, ghost], proxy_url, api_key))
    wire.clear()
    # The LiteLLM proxy hands its health checks a deep copy of the router's model list, as here.
    model_list = copy.deepcopy(router.get_model_list())
    healthy, unhealthy, _ = _run_async(litellm, wire, lambda: perform_health_check(model_list))
    assert [e["model"] for e in healthy] == [f"openai/{agent.name}"], unhealthy
    assert [e["model"] for e in unhealthy] == [f"openai/{ghost}"]
    assert "does not exist" in unhealthy[0]["error"]
    probes = wire.chats()
    assert len(probes) == 2
    assert all(p.request.headers.get(HEALTH_HEADER) == "1" for p in probes)
    assert {json.loads(p.request.content)["messages"][0]["content"] for p in probes} <= set(HEALTH_PROMPTS)
    assert user_texts(letta, agent.id) == []
    assert runs(letta, agent.id) == []

    wire.clear()
    text = f"after the health check {_marker()}"
    resp = router.completion(model=agent.name, messages=[{"role": "user", "content": text}])
    assert resp.choices[0].message.content == f"Echo: {text}"
    assert HEALTH_HEADER not in wire.last_chat().request.headers
    assert user_texts(letta, agent.id) == [text]


def test_example_config_never_resends_a_failed_turn(
    litellm: ModuleType, proxy_url: str, api_key: str, letta: Letta, broken_agent: AgentState
):
    """With the example entry (num_retries: 0) a failed turn (502, x-should-retry: false) is sent once.

    Without it LiteLLM's router sends it three times: it retries every 5xx and ignores x-should-retry.
    """
    (entry,) = _example_model_list([broken_agent.name], proxy_url, api_key)
    without = copy.deepcopy(entry)
    del without["litellm_params"]["num_retries"]
    for model_list, expected_sends in (([entry], 1), ([without], 3)):
        router = litellm.Router(model_list=model_list)
        before = len(runs(letta, broken_agent.id))
        with pytest.raises(litellm.BadGatewayError) as exc:
            router.completion(
                model=broken_agent.name, messages=[{"role": "user", "content": f"fail {_marker()}"}]
            )
        assert exc.value.status_code == 502
        assert len(runs(letta, broken_agent.id)) - before == expected_sends


# ---------------------------------------------------------------- the LiteLLM proxy server


@dataclass
class LiteLLMServer:
    url: str
    master_key: str
    agent: AgentState  # a fresh agent, only used through this server
    ghosts: tuple[str, str]  # configured in LiteLLM, but no such agents in Letta
    broken: AgentState  # every turn fails in Letta
    runs_after_first_health_cycle: int
    health: dict[str, Any]  # GET /health once the first background cycle was done

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.master_key, max_retries=0, timeout=120.0)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (it is our child's own session), SIGKILL after 15 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def _deployment_models(health: dict[str, Any]) -> set[str]:
    return {
        e.get("model") for e in health.get("healthy_endpoints", []) + health.get("unhealthy_endpoints", [])
    }


@pytest.fixture(scope="session")
def litellm_server(
    litellm: ModuleType,
    proxy_url: str,
    api_key: str,
    letta: Letta,
    make_agent: Callable[[], AgentState],
    broken_agent: AgentState,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiteLLMServer]:
    """``litellm --config`` from the example config (our URL, key and agents filled in) on a free loopback
    port; ready once its first background health cycle is done; stopped at the end."""
    exe = Path(sys.executable).with_name("litellm")
    missing = [
        m for m in ("fastapi", "uvicorn", "litellm_proxy_extras") if importlib.util.find_spec(m) is None
    ]
    if missing or not exe.exists():
        unavailable(f"the LiteLLM proxy server needs litellm[proxy] (missing: {missing or [str(exe)]})")

    # Two missing agents: after a 404, LiteLLM's router cools the deployment down (429s for 5 s).
    agent, ghosts = make_agent(), (f"no-such-agent-{_marker()}", f"no-such-agent-{_marker()}")
    names = (agent.name, *ghosts, broken_agent.name)
    config = _example_config()
    template = config["model_list"][0]
    config["model_list"] = [_deployment(template, name) for name in names]
    # One background cycle at start, none during the tests: run counts stay exact.
    config["general_settings"]["health_check_interval"] = 3600

    tmp = tmp_path_factory.mktemp("litellm")
    config_path = tmp / "config.yaml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    master_key = "sk-litellm-e2e-" + uuid.uuid4().hex
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_HOST", "REDIS_URL")}
    env.update(
        OFFLINE_ENV,
        LETTA_PROXY_API_BASE=f"{proxy_url}/v1",
        LETTA_PROXY_API_KEY=api_key,
        LITELLM_MASTER_KEY=master_key,
    )
    log_path = tmp / "litellm.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [str(exe), "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def fail(why: str) -> None:
        _stop(proc)
        log.close()
        output = log_path.read_text(errors="replace")[-6000:]
        pytest.fail(f"{why}; LiteLLM output (end):\n{output}", pytrace=False)

    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            fail(f"litellm exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/health/readiness", timeout=2.0).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            fail(f"litellm not ready on {url} after {SERVER_START_TIMEOUT_S:.0f} s")
        time.sleep(0.5)

    expected = {f"openai/{name}" for name in names}
    deadline = time.monotonic() + HEALTH_CYCLE_TIMEOUT_S
    while True:
        health = httpx.get(
            f"{url}/health", headers={"Authorization": f"Bearer {master_key}"}, timeout=30
        ).json()
        if expected <= _deployment_models(health):
            break
        if time.monotonic() > deadline:
            fail(
                f"LiteLLM's first background health cycle took over {HEALTH_CYCLE_TIMEOUT_S:.0f} s: {health}"
            )
        time.sleep(1.0)

    yield LiteLLMServer(url, master_key, agent, ghosts, broken_agent, len(runs(letta, agent.id)), health)
    _stop(proc)
    log.close()


def test_server_lists_the_configured_agents(litellm_server: LiteLLMServer):
    ids = {m.id for m in litellm_server.client().models.list()}
    server = litellm_server
    assert {server.agent.name, *server.ghosts, server.broken.name} <= ids


def test_server_sync(litellm_server: LiteLLMServer, letta: Letta):
    """Through the LiteLLM server: the agent's answer and Letta's own token counts, unchanged."""
    server = litellm_server
    text = f"via the litellm server {_marker()}"
    with server.client() as client:
        resp = client.chat.completions.create(
            model=server.agent.name, messages=[{"role": "user", "content": text}]
        )
    assert resp.choices[0].message.content == f"Echo: {text}"
    assert resp.choices[0].finish_reason == "stop"
    assert _assert_usage(resp.usage) == _letta_usage(letta, server.agent.id)
    assert any(text in t for t in user_texts(letta, server.agent.id))


def test_server_stream(litellm_server: LiteLLMServer, letta: Letta):
    """A stream through the LiteLLM server: content in pieces, stop, then usage equal to Letta's."""
    server = litellm_server
    text = f"streamed via the litellm server {_marker()}"
    with server.client() as client:
        chunks = list(
            client.chat.completions.create(
                model=server.agent.name,
                messages=[{"role": "user", "content": text}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == f"Echo: {text}"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    usages = [c.usage for c in chunks if c.usage is not None]
    assert len(usages) == 1
    assert _assert_usage(usages[0]) == _letta_usage(letta, server.agent.id)


def test_server_client_tool_loop(litellm_server: LiteLLMServer):
    """Through the LiteLLM server: tool_calls out, the tool message back, the answer quoting the result."""
    server = litellm_server
    text = f'/call get_weather {{"city": "Accra-{_marker()}"}}'
    messages: list[Any] = [{"role": "user", "content": text}]
    with server.client() as client:
        first = client.chat.completions.create(model=server.agent.name, messages=messages, tools=[WEATHER])
        assert first.choices[0].finish_reason == "tool_calls"
        (call,) = first.choices[0].message.tool_calls or []
        assert call.function.name == "get_weather"
        messages += [first.choices[0].message, {"role": "tool", "tool_call_id": call.id, "content": "mist"}]
        answer = client.chat.completions.create(model=server.agent.name, messages=messages, tools=[WEATHER])
    content = answer.choices[0].message.content or ""
    assert content.startswith(f"Echo: {text} | get_weather returned: ") and "mist" in content


def test_server_model_not_configured_is_400(litellm_server: LiteLLMServer):
    """A model LiteLLM does not know is LiteLLM's own clean 400; the proxy is never asked."""
    with litellm_server.client() as client, pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model=f"unconfigured-{_marker()}", messages=[{"role": "user", "content": "hi"}]
        )
    assert "Invalid model name" in str(exc.value)


@pytest.mark.parametrize("stream", [False, True], ids=["sync", "stream"])
def test_server_unknown_agent_is_404(litellm_server: LiteLLMServer, stream: bool):
    """A configured model whose agent does not exist: LiteLLM passes on the proxy's 404 and message."""
    ghost = litellm_server.ghosts[stream]
    with litellm_server.client() as client, pytest.raises(openai.NotFoundError) as exc:
        resp = client.chat.completions.create(
            model=ghost, messages=[{"role": "user", "content": "hi"}], stream=stream
        )
        if stream:
            list(resp)
    assert exc.value.status_code == 404
    assert f"The model '{ghost}' does not exist" in str(exc.value)


def test_server_health_checks_never_reach_the_agent(litellm_server: LiteLLMServer, letta: Letta):
    """LiteLLM's background health check (example config) finds the agent healthy and the missing agent
    unhealthy, and writes nothing into the agent: no message, no run. Real traffic still gets through."""
    server = litellm_server
    healthy = {e["model"] for e in server.health["healthy_endpoints"]}
    unhealthy = {e["model"]: e for e in server.health["unhealthy_endpoints"]}
    assert f"openai/{server.agent.name}" in healthy, server.health
    assert {f"openai/{ghost}" for ghost in server.ghosts} <= unhealthy.keys(), server.health
    assert all("does not exist" in unhealthy[f"openai/{ghost}"]["error"] for ghost in server.ghosts)
    assert server.runs_after_first_health_cycle == 0, "LiteLLM's health check ran a turn on the agent"
    texts = user_texts(letta, server.agent.id)
    assert not [t for t in texts if any(p in t for p in HEALTH_PROMPTS)], texts

    text = f"real traffic after the health check {_marker()}"
    with server.client() as client:
        resp = client.chat.completions.create(
            model=server.agent.name, messages=[{"role": "user", "content": text}]
        )
    assert resp.choices[0].message.content == f"Echo: {text}"
    assert any(text in t for t in user_texts(letta, server.agent.id))


def test_server_never_resends_a_failed_turn(litellm_server: LiteLLMServer, letta: Letta):
    """A turn that fails in Letta (proxy: 502, x-should-retry: false) goes to Letta once, not three times."""
    server = litellm_server
    before = len(runs(letta, server.broken.id))
    with server.client() as client, pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(
            model=server.broken.name, messages=[{"role": "user", "content": f"fail {_marker()}"}]
        )
    assert exc.value.status_code >= 500
    assert len(runs(letta, server.broken.id)) - before == 1


# ---------------------------------------------------------------- the Responses API through LiteLLM


def test_library_responses(
    litellm: ModuleType, proxy_url: str, api_key: str, agent: AgentState, letta: Letta
):
    """litellm.responses sends `openai/` models to our /v1/responses: whole and streamed."""
    text, streamed = f"responses via litellm {_marker()}", f"streamed responses via litellm {_marker()}"
    common = {"model": f"openai/{agent.name}", "api_base": f"{proxy_url}/v1", "api_key": api_key}
    whole = litellm.responses(input=text, **common)
    assert whole.output[0].content[0].text == f"Echo: {text}"
    assert whole.usage.input_tokens > 0 and whole.usage.output_tokens > 0
    kinds, deltas = [], []
    for event in litellm.responses(input=streamed, stream=True, **common):
        kinds.append(str(getattr(event.type, "value", event.type)))
        if kinds[-1] == "response.output_text.delta":
            deltas.append(event.delta)
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "".join(deltas) == f"Echo: {streamed}"
    assert [t for t in user_texts(letta, agent.id) if t in (text, streamed)] == [text, streamed]


def test_server_responses(litellm_server: LiteLLMServer, letta: Letta):
    """The LiteLLM server from the example config passes /v1/responses on, previous_response_id included."""
    server = litellm_server
    text = f"responses via the litellm server {_marker()}"
    with server.client() as client:
        first = client.responses.create(model=server.agent.name, input=text)
        assert first.output_text == f"Echo: {text}"
        with client.responses.stream(
            model=server.agent.name, input="and on", previous_response_id=first.id
        ) as stream:
            second = stream.get_final_response()
    assert second.output_text == "Echo: and on"
    assert user_texts(letta, server.agent.id)[-2:] == [text, "and on"]
