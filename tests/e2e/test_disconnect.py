"""End to end: a client that leaves mid-stream gets its agent run cancelled in the real Letta."""

import time
from collections.abc import Callable

import httpx
from letta_client import Letta
from letta_client.types import AgentState

from tests.e2e.letta_history import runs


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
    deadline = time.monotonic() + 20
    statuses: list[str | None] = []
    while time.monotonic() < deadline:
        statuses = [run.status for run in runs(letta, agent.id)]
        if statuses and all(status != "running" for status in statuses):
            break
        time.sleep(0.25)
    assert statuses == ["cancelled"], statuses
