"""Graceful shutdown: on SIGTERM, open streams finish, new connections are refused, the process exits 0."""

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import KEY
from tests.fault_letta import FaultLetta
from tests.proxy_process import running_proxy


@pytest.fixture(scope="module")
def fault() -> Iterator[FaultLetta]:
    server = FaultLetta().start()
    yield server
    server.stop()


def test_sigterm_lets_an_open_stream_finish_then_exits_0(fault: FaultLetta, tmp_path: Path) -> None:
    """A slow stream under way when SIGTERM arrives still ends with [DONE]; then the process exits cleanly."""
    body = {"model": "slow-stream", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with running_proxy(tmp_path, KEY, LETTA_BASE_URL=fault.url, PROXY_SHUTDOWN_GRACE_SECONDS="20") as proxy:
        headers = {"X-Api-Key": KEY}
        with httpx.stream(
            "POST", f"{proxy.url}/v1/chat/completions", json=body, headers=headers, timeout=30
        ) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: {")
            proxy.process.send_signal(signal.SIGTERM)
            rest = list(lines)
        frames = [line for line in rest if line]
        assert frames[-1] == "data: [DONE]"
        text = "".join(
            json.loads(f[6:])["choices"][0]["delta"].get("content", "")
            for f in frames[:-1]
            if f.startswith("data: {")
        )
        assert text == "Echo: stream me token by token"
        assert proxy.process.wait(timeout=20) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{proxy.url}/health", timeout=2)
