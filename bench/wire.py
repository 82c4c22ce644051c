"""The fake upstream's payloads, built once from real Letta captures (tests/fixtures) and kept as bytes.

Each `Profile` is one fake agent: its name `bench-<chunks>x<delay_ms>` says how many token chunks its
stream sends and how many milliseconds apart. The same profile answers OpenAI's wire format too, so
LiteLLM can be measured in front of an upstream that sends the same number of chunks at the same pace.
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
PROMPT = "hi"


def _capture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_bytes())


def _sse_events(name: str) -> list[dict[str, Any]]:
    lines = (FIXTURES / name).read_text().splitlines()
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def sse(payload: Any) -> bytes:
    """One SSE event, `data: {json}\\n\\n`, as Letta and OpenAI both frame them."""
    data = payload if isinstance(payload, bytes) else _compact(payload)
    return b"data: " + data + b"\n\n"


DONE = sse(b"[DONE]")


RELATIONS = {
    "blocks": [],
    "tools": [],
    "sources": [],
    "identities": [],
    "identity_ids": [],
    "secrets": [],
    "tool_exec_environment_variables": [],
    "managed_group": None,
    "multi_agent_group": None,
    "pending_approval": None,
}
INDEX = "{i}"  # where a load generator puts the agent's number (4 digits) in a URL or body


@dataclass(frozen=True)
class Profile:
    """A stream shape, served by `agents` fake agents (Letta runs one turn at a time per agent, and so
    does the proxy: concurrent load must be spread over agents to measure the proxy, not that queue)."""

    index: int
    chunks: int
    delay_ms: float
    agents: int = 1

    @classmethod
    def parse(cls, index: int, text: str) -> "Profile":
        """`CHUNKSxDELAY_MS[:AGENTS]`, e.g. `50x20:64`."""
        shape, _, agents = text.partition(":")
        chunks, _, delay = shape.partition("x")
        return cls(index, int(chunks), float(delay or 0), int(agents or 1))

    @property
    def spec(self) -> str:
        return f"{self.chunks}x{self.delay_ms:g}:{self.agents}"

    @property
    def name(self) -> str:
        """The profile's OpenAI model name (LiteLLM has no per-agent queue, one model is equivalent)."""
        return f"bench-{self.chunks}x{self.delay_ms:g}"

    def agent_name(self, number: int | str) -> str:
        return f"{self.name}-a{number:04d}" if isinstance(number, int) else f"{self.name}-a{number}"

    def agent_id(self, number: int | str) -> str:
        digits = f"{number:04d}" if isinstance(number, int) else number
        return f"agent-00000000-0000-4000-{self.index:04d}-00000000{digits}"


def agent_records(profiles: list[Profile], slim: bool) -> list[bytes]:
    """One captured agent per fake agent, with its id and name; `slim` drops the relations, as Letta
    does for those a request's `include` does not name."""
    agent = _capture("list_agents.json")[0]
    if slim:
        agent = {**agent, **RELATIONS, "memory": {**agent["memory"], "blocks": []}}
    return [
        _compact({**agent, "id": p.agent_id(n), "name": p.agent_name(n)})
        for p in profiles
        for n in range(p.agents)
    ]


def letta_turn() -> bytes:
    """A whole turn (`POST /v1/agents/{id}/messages`), exactly as captured."""
    return (FIXTURES / "send_message.json").read_bytes()


def letta_stream(profile: Profile) -> list[bytes]:
    """The token stream's events: ping, `chunks` assistant tokens, stop reason and usage, `[DONE]`."""
    events = _sse_events("stream_tokens.sse")
    by_type = {event["message_type"]: event for event in events}
    token = by_type["assistant_message"]
    tokens = [sse({**token, "content": f" tok{i}"}) for i in range(profile.chunks)]
    return [
        sse(by_type["ping"]),
        *tokens,
        sse(by_type["stop_reason"]) + sse(by_type["usage_statistics"]) + DONE,
    ]


def openai_completion(profile: Profile) -> bytes:
    """The OpenAI answer an equivalent upstream gives: the captured turn's text and usage."""
    turn = _capture("send_message.json")
    usage = {key: turn["usage"][key] for key in ("prompt_tokens", "completion_tokens", "total_tokens")}
    return _compact(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": profile.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": turn["messages"][0]["content"]},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": usage,
        }
    )


def openai_stream(profile: Profile) -> list[bytes]:
    """OpenAI chunks: the role chunk, `chunks` content chunks, the finish chunk, `[DONE]`."""
    head = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": profile.name,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    tokens = [chunk({"content": f" tok{i}"}) for i in range(profile.chunks)]
    return [chunk({"role": "assistant", "content": ""}), *tokens, chunk({}, "stop") + DONE]


def letta_request(stream: bool) -> bytes:
    """What letta-client sends for one turn (for driving the fake directly)."""
    body: dict[str, Any] = {"messages": [{"role": "user", "content": PROMPT}]}
    if stream:
        body |= {"streaming": True, "stream_tokens": True, "include_pings": True}
    return _compact(body)


def openai_request(model: str, stream: bool) -> bytes:
    """What an OpenAI client sends to the proxy or LiteLLM."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    if stream:
        body["stream"] = True
    return _compact(body)
