"""Graceful shutdown: on SIGTERM or SIGINT, open streams finish within the grace, new connections are
refused, the process exits 0; a stream that outlives the grace is cut."""

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import KEY
from tests.fault_letta import FaultLetta
from tests.proxy_process import running_proxy

pytestmark = pytest.mark.slow  # real processes; outside the fast loop


@pytest.fixture(scope="module")
def fault() -> Iterator[FaultLetta]:
    server = FaultLetta().start()
    yield server
    server.stop()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_lets_an_open_stream_finish_then_exits_0(
    fault: FaultLetta, tmp_path: Path, signum: signal.Signals
) -> None:
    """A slow stream under way when the signal comes still ends with [DONE], then the process exits 0."""
    body = {"model": "slow-stream", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with running_proxy(tmp_path, KEY, LETTA_BASE_URL=fault.url, PROXY_SHUTDOWN_GRACE_SECONDS="20") as proxy:
        headers = {"X-Api-Key": KEY}
        with httpx.stream(
            "POST", f"{proxy.url}/v1/chat/completions", json=body, headers=headers, timeout=30
        ) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: {")
            proxy.process.send_signal(signum)
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
        assert "Traceback" not in proxy.output() and "CancelledError" not in proxy.output()  # a quiet drain
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{proxy.url}/health", timeout=2)


def test_a_stream_that_outlives_the_grace_is_cut_then_exits_0(fault: FaultLetta, tmp_path: Path) -> None:
    """A stream whose upstream stays silent is cut when the grace ends, not awaited; the log says so."""
    body = {"model": "endless-stream", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with running_proxy(tmp_path, KEY, LETTA_BASE_URL=fault.url, PROXY_SHUTDOWN_GRACE_SECONDS="1") as proxy:
        with httpx.stream(
            "POST", f"{proxy.url}/v1/chat/completions", json=body, headers={"X-Api-Key": KEY}, timeout=30
        ) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: {")
            proxy.process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            with pytest.raises(httpx.RemoteProtocolError):  # cut: the chunked body never ends
                list(lines)
        assert proxy.process.wait(timeout=20) == 0
        assert time.monotonic() - started < 10
        assert "open requests cut after the 1 s grace" in proxy.output()
