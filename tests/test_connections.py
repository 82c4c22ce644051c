"""The connection policy, on a real proxy process: silent connections are closed after the header
deadline, the open-connection cap is PROXY_MAX_CONNECTIONS (not the listen backlog), and /health keeps
answering while more silent connections are open than the old cap of 1,024."""

import resource
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import KEY
from tests.fault_letta import FaultLetta
from tests.proxy_process import free_port, running_proxy

pytestmark = pytest.mark.slow
NOWHERE = f"http://127.0.0.1:{free_port()}"  # no Letta: these requests never reach one


@contextmanager
def silent_connections(url: str, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections to the proxy that never send a byte, closed at the end."""
    host, port = url.removeprefix("http://").split(":")
    with ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.create_connection((host, int(port)), timeout=5))
            sockets.append(sock)
        yield sockets


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True when the proxy closes the connection (EOF) within `within` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def health_answers(url: str, within: float) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=within).status_code == 200
    except httpx.TimeoutException:
        return False


def test_silent_connections_beyond_the_old_cap_leave_health_answering_and_are_closed(tmp_path: Path) -> None:
    """1,100 connections that never send a byte (the old cap was 1,024): /health still answers at once,
    and each silent one is closed once the header deadline has passed."""
    count = 1100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if min(hard, 4 * count) > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * count), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 2 * count:
        pytest.skip(f"the open-file limit ({hard}) is too low to open {count} connections")
    with running_proxy(tmp_path, KEY, LETTA_BASE_URL=NOWHERE, PROXY_HEADER_TIMEOUT_SECONDS="4") as proxy:
        with silent_connections(proxy.url, count) as sockets:
            deadline = time.monotonic() + 8
            assert health_answers(proxy.url, within=1)
            closed = [closed_by_peer(sock, within=max(0.1, deadline - time.monotonic())) for sock in sockets]
            assert sum(closed) == count
            assert health_answers(proxy.url, within=2)


def test_the_open_connection_cap_is_the_setting_and_the_deadline_frees_it(tmp_path: Path) -> None:
    """With PROXY_MAX_CONNECTIONS silent connections open, a new one waits in the listen queue; once the
    header deadline closes the silent ones, it is served."""
    with running_proxy(
        tmp_path,
        KEY,
        LETTA_BASE_URL=NOWHERE,
        PROXY_MAX_CONNECTIONS="16",
        PROXY_HEADER_TIMEOUT_SECONDS="3",
    ) as proxy:
        time.sleep(3.5)  # the start-up check's connections are closed by the deadline too
        with silent_connections(proxy.url, 16):
            started = time.monotonic()
            assert not health_answers(proxy.url, within=1)
            assert health_answers(proxy.url, within=5)
            assert time.monotonic() - started < 5


def test_a_kept_alive_connection_left_idle_is_closed_after_the_deadline(tmp_path: Path) -> None:
    """After a request, a connection that sends nothing more is closed after the same deadline."""
    with running_proxy(tmp_path, KEY, LETTA_BASE_URL=NOWHERE, PROXY_HEADER_TIMEOUT_SECONDS="1") as proxy:
        with silent_connections(proxy.url, 1) as [sock]:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: proxy\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            assert closed_by_peer(sock, within=3)


def test_a_stream_longer_than_the_header_deadline_is_not_cut(tmp_path: Path) -> None:
    """The deadline is on reading a request head, never on an answer being sent: a stream of about 3 s
    under a 1 s deadline ends with [DONE], and its kept-alive connection serves the next request."""
    fault = FaultLetta().start()
    try:
        body = {"model": "slow-stream", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with (
            running_proxy(tmp_path, KEY, LETTA_BASE_URL=fault.url, PROXY_HEADER_TIMEOUT_SECONDS="1") as proxy,
            httpx.Client(base_url=proxy.url, headers={"X-Api-Key": KEY}, timeout=30) as client,
        ):
            started = time.monotonic()
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                lines = [line for line in response.iter_lines() if line]
            assert time.monotonic() - started > 2
            assert lines[-1] == "data: [DONE]"
            assert client.get("/health").status_code == 200
    finally:
        fault.stop()
