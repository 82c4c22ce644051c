"""End to end: the real OpenAI SDK talks to the proxy (a real process), which talks to a real Letta.

Letta's model is the offline fake LLM from ``../shared/letta-server``: it answers ``Echo: <user text>``
(streamed word by word) and, for a user text starting with ``/tool``, first calls ``conversation_search``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import httpx
import openai
import pytest
from letta_client import Letta
from letta_client.types import AgentState
from openai.types.chat import ChatCompletionChunk

from tests.e2e.letta_history import user_texts


def _marker() -> str:
    """A short unique token, so a text can be found in an agent's history without ambiguity."""
    return uuid.uuid4().hex[:10]


def _stream(client: openai.OpenAI, **kwargs) -> list[ChatCompletionChunk]:
    """Run a streaming chat completion to the end and return all of its chunks."""
    return list(client.chat.completions.create(stream=True, **kwargs))


def _assert_usage(usage) -> None:
    """Usage carries Letta's token counts: all positive and consistent."""
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


# ---------------------------------------------------------------- models


def test_models_list_shows_agent(client: openai.OpenAI, agent: AgentState, proxy_url: str, api_key: str):
    """GET /v1/models lists a freshly created agent by name, in OpenAI's exact list shape."""
    models = {m.id: m for m in client.models.list()}
    assert agent.name in models
    model = models[agent.name]
    assert model.object == "model"
    assert model.owned_by == "letta"
    assert isinstance(model.created, int)
    assert 1_600_000_000 < model.created <= time.time() + 120  # unix seconds, not ms, not 0

    body = httpx.get(f"{proxy_url}/v1/models", headers={"Authorization": f"Bearer {api_key}"}).json()
    assert body["object"] == "list"
    entry = next(d for d in body["data"] if d["id"] == agent.name)
    expected = {"id": agent.name, "object": "model", "created": model.created, "owned_by": "letta"}
    assert {k: entry.get(k) for k in expected} == expected


# ---------------------------------------------------------------- chat, plain


def test_chat_sync(client: openai.OpenAI, agent: AgentState):
    """A non-streaming turn returns the agent's answer, finish_reason stop and positive usage."""
    text = f"hello {_marker()}"
    resp = client.chat.completions.create(model=agent.name, messages=[{"role": "user", "content": text}])
    assert resp.object == "chat.completion"
    assert resp.id
    assert resp.model == agent.name
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == f"Echo: {text}"
    assert not choice.message.tool_calls
    _assert_usage(resp.usage)


def test_chat_stream(client: openai.OpenAI, agent: AgentState):
    """A streaming turn: one id, role first, content in several chunks, stop, then a usage-only chunk."""
    text = f"stream me token by token {_marker()}"
    chunks = _stream(
        client,
        model=agent.name,
        messages=[{"role": "user", "content": text}],
        stream_options={"include_usage": True},
    )
    assert chunks
    assert {c.id for c in chunks} == {chunks[0].id}
    assert all(c.object == "chat.completion.chunk" for c in chunks)

    *choice_chunks, usage_chunk = chunks
    assert usage_chunk.choices == []
    _assert_usage(usage_chunk.usage)
    assert all(c.usage is None for c in choice_chunks)
    assert all(len(c.choices) == 1 for c in choice_chunks)

    deltas = [c.choices[0].delta for c in choice_chunks]
    assert deltas[0].role == "assistant"
    pieces = [d.content for d in deltas if d.content]
    assert len(pieces) > 1, f"content was not streamed in pieces: {pieces!r}"
    assert "".join(pieces) == f"Echo: {text}"
    assert not any(d.tool_calls for d in deltas)

    finishes = [c.choices[0].finish_reason for c in choice_chunks]
    assert finishes[-1] == "stop"
    assert all(f is None for f in finishes[:-1])


def test_chat_stream_without_usage_option(client: openai.OpenAI, agent: AgentState):
    """Without stream_options.include_usage no usage-only chunk is sent."""
    text = f"no usage please {_marker()}"
    chunks = _stream(client, model=agent.name, messages=[{"role": "user", "content": text}])
    assert all(len(c.choices) == 1 for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == f"Echo: {text}"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stream_wire_framing(proxy_url: str, api_key: str, agent: AgentState):
    """On the wire a stream is text/event-stream ``data:`` frames ending with exactly one ``data: [DONE]``."""
    body = {
        "model": agent.name,
        "stream": True,
        "messages": [{"role": "user", "content": f"frames {_marker()}"}],
    }
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.stream(
        "POST", f"{proxy_url}/v1/chat/completions", json=body, headers=headers, timeout=120
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    frames = [f for f in raw.replace("\r\n", "\n").split("\n\n") if f.strip()]
    assert all(f.startswith("data: ") for f in frames), frames
    assert frames[-1] == "data: [DONE]"
    assert frames.count("data: [DONE]") == 1
    for frame in frames[:-1]:
        assert json.loads(frame[len("data: ") :])["object"] == "chat.completion.chunk"


# ---------------------------------------------------------------- chat, tool calls


def test_tool_call_sync(client: openai.OpenAI, agent: AgentState):
    """The agent's own tool call (Letta ran it) is told as reasoning_content, never as tool_calls a client
    would try to run; then its final answer."""
    resp = client.chat.completions.create(
        model=agent.name, messages=[{"role": "user", "content": "/tool something"}]
    )
    choice = resp.choices[0]
    assert choice.message.content == "Echo: /tool something"
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls
    reasoning = getattr(choice.message, "reasoning_content", None) or ""
    name, _, arguments = reasoning.removeprefix("Tool call ").partition(": ")
    assert name == "conversation_search"
    assert isinstance(json.loads(arguments), dict)
    _assert_usage(resp.usage)


def test_tool_call_stream(client: openai.OpenAI, agent: AgentState):
    """A streamed turn with the agent's own tool call tells it as reasoning_content, then the answer."""
    chunks = _stream(
        client,
        model=agent.name,
        messages=[{"role": "user", "content": "/tool something"}],
        stream_options={"include_usage": True},
    )
    assert {c.id for c in chunks} == {chunks[0].id}
    *choice_chunks, usage_chunk = chunks
    assert usage_chunk.choices == []
    _assert_usage(usage_chunk.usage)

    deltas = [c.choices[0].delta for c in choice_chunks]
    assert deltas[0].role == "assistant"
    assert not any(d.tool_calls for d in deltas), "the agent's own call must not be a tool_call"
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    name, _, arguments = reasoning.removeprefix("Tool call ").partition(": ")
    assert name == "conversation_search"
    assert isinstance(json.loads(arguments), dict)

    assert "".join(d.content or "" for d in deltas) == "Echo: /tool something"
    assert choice_chunks[-1].choices[0].finish_reason == "stop"


# ---------------------------------------------------------------- errors


def test_wrong_key_is_401(proxy_url: str, agent: AgentState):
    """A wrong API key is rejected with 401 (openai.AuthenticationError) on models and chat."""
    bad = openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.models.list()
    assert exc.value.status_code == 401
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.chat.completions.create(model=agent.name, messages=[{"role": "user", "content": "hi"}])
    assert exc.value.status_code == 401


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/v1/models"), ("POST", "/v1/chat/completions")], ids=["models", "chat"]
)
def test_missing_key_is_401(proxy_url: str, agent: AgentState, method: str, path: str):
    """A request without any API key is rejected with 401 and an OpenAI-shaped error body."""
    body = {"model": agent.name, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.request(method, f"{proxy_url}{path}", json=body if method == "POST" else None, timeout=30)
    assert r.status_code == 401
    assert "error" in r.json()


@pytest.mark.parametrize("stream", [False, True], ids=["sync", "stream"])
def test_unknown_model_is_404(client: openai.OpenAI, stream: bool):
    """An unknown model is a 404 with code model_not_found, also for streams (fails before the 200)."""
    with pytest.raises(openai.NotFoundError) as exc:
        resp = client.chat.completions.create(
            model=f"no-such-agent-{_marker()}", messages=[{"role": "user", "content": "hi"}], stream=stream
        )
        if stream:
            list(resp)
    assert exc.value.status_code == 404
    assert exc.value.code == "model_not_found"


# ---------------------------------------------------------------- what reaches the agent


def test_only_new_turns_forwarded(client: openai.OpenAI, letta: Letta, make_agent: Callable[[], AgentState]):
    """Only user messages after the last assistant message reach the agent; earlier ones never do."""
    agent = make_agent()
    first, second = f"first {_marker()}", f"second {_marker()}"
    resp = client.chat.completions.create(
        model=agent.name,
        messages=[
            {"role": "system", "content": "You are a test."},
            {"role": "user", "content": first},
            {"role": "assistant", "content": "x"},
            {"role": "user", "content": second},
        ],
    )
    assert resp.choices[0].message.content == f"Echo: {second}"
    texts = user_texts(letta, agent.id)
    assert any(second in t for t in texts), texts
    assert not any(first in t for t in texts), texts


def test_new_user_turns_forwarded_in_order(
    client: openai.OpenAI, letta: Letta, make_agent: Callable[[], AgentState]
):
    """Several user messages after the last assistant message all reach the agent, in order."""
    agent = make_agent()
    old, one, two = f"old {_marker()}", f"one {_marker()}", f"two {_marker()}"
    resp = client.chat.completions.create(
        model=agent.name,
        messages=[
            {"role": "user", "content": old},
            {"role": "assistant", "content": "x"},
            {"role": "user", "content": one},
            {"role": "user", "content": two},
        ],
    )
    content = resp.choices[0].message.content
    assert content and content.startswith("Echo: ") and two in content
    history = "\n".join(user_texts(letta, agent.id))
    assert old not in history
    assert one in history and two in history, history
    assert history.index(one) < history.index(two)
