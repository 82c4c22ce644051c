"""Client mistakes in the request body, sent over raw sockets to a real proxy process: each is a 400 or
a 408 in OpenAI's shape, never a 500, with no traceback in the log and nothing counted as a 5xx."""

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import KEY
from tests.proxy_process import ProxyProcess, free_port, running_proxy

BODY_TIMEOUT = 2.0
HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer "
    + KEY.encode()
    + b"\r\nContent-Type: application/json\r\n"
)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    with running_proxy(
        tmp_path_factory.mktemp("bad-requests"),
        KEY,
        LETTA_BASE_URL=f"http://127.0.0.1:{free_port()}",  # none: the body is refused before Letta
        PROXY_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT),
    ) as process:
        yield process


def connect(proxy: ProxyProcess) -> socket.socket:
    host, port = proxy.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, object]]:
    """Status, headers and JSON body of one response (with a Content-Length, as errors have)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(status_line.split()[1]), headers, json.loads(body)


def exchange(proxy: ProxyProcess, raw: bytes, shut: bool = False) -> tuple[int, dict[str, str], dict]:
    with connect(proxy) as sock:
        sock.sendall(raw)
        if shut:
            sock.shutdown(socket.SHUT_WR)  # the body ends here; the answer can still be read
        return read_response(sock)


def with_length(body: bytes, length: int | None = None) -> bytes:
    return HEAD + b"Content-Length: %d\r\n\r\n" % (len(body) if length is None else length) + body


def assert_error(status: int, body: dict, expected_status: int, words: str) -> None:
    assert status == expected_status
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert words in error["message"]


def server_errors(proxy: ProxyProcess) -> float:
    """How many 5xx answers the proxy's metrics count so far."""
    metrics = httpx.get(f"{proxy.url}/metrics", headers={"X-Api-Key": KEY}, timeout=5).text
    lines = (line for line in metrics.splitlines() if line.startswith("proxy_requests_total{"))
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if 'status="5' in line)


@pytest.fixture
def no_server_errors(proxy: ProxyProcess) -> Iterator[None]:
    """During the test, nothing in the log looks like a crash and the metrics count no new 5xx."""
    logged, counted = len(proxy.output()), server_errors(proxy)
    yield
    output = proxy.output()[logged:]
    assert "Traceback" not in output and " ERROR " not in output
    assert server_errors(proxy) == counted


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_server_errors")]


@pytest.mark.parametrize(
    "body, words",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"model": "a", "messages": ' + b"[" * 3000 + b"]" * 3000 + b"}", "nested too deeply"),
        (b'{"model": "\xff\xfe", "messages": [{"role": "user", "content": "hi"}]}', "invalid UTF-8"),
        (b'{"model": "a", "messages": [{"role": "user", "content": "caf\xe9"}]}', "invalid UTF-8"),
    ],
    ids=["nested-arrays", "nested-messages", "invalid-utf8-model", "latin1-content"],
)
def test_an_undecodable_body_is_a_400_naming_it(proxy: ProxyProcess, body: bytes, words: str) -> None:
    """Deep nesting and invalid UTF-8 are malformed JSON, as a syntax error is."""
    status, _, error = exchange(proxy, with_length(body))
    assert_error(status, error, 400, f"JSON is malformed: {words}")


@pytest.mark.parametrize(
    "raw",
    [
        HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\n{}\r\n0\r\n\r\n",
    ],
    ids=["chunk-size-not-hex", "chunk-shorter-than-its-size"],
)
def test_a_bad_chunked_encoding_is_a_400(proxy: ProxyProcess, raw: bytes) -> None:
    """A chunked body the server cannot parse is the client's mistake, and the connection is closed."""
    status, headers, error = exchange(proxy, raw, shut=True)
    assert_error(status, error, 400, "cut off or malformed")
    assert headers["connection"] == "close"


def test_a_body_cut_off_mid_way_is_a_400_to_a_client_still_listening(proxy: ProxyProcess) -> None:
    """Fewer bytes than Content-Length, then the end of the client's side: a 400 it can still read."""
    status, _, error = exchange(proxy, with_length(b'{"model": "a"', length=100), shut=True)
    assert_error(status, error, 400, "cut off or malformed")


def test_a_client_that_leaves_mid_body_is_let_go_quietly(proxy: ProxyProcess) -> None:
    """A client gone before its body ended gets no traceback in the log and no 5xx in the metrics."""
    before = proxy.output().count("POST /v1/chat/completions 400")
    with connect(proxy) as sock:
        sock.sendall(with_length(b'{"model": "a"', length=100))
    deadline = time.monotonic() + 5
    while proxy.output().count("POST /v1/chat/completions 400") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.output().count("POST /v1/chat/completions 400") == before + 1


def test_a_body_dripped_slower_than_the_deadline_is_a_408_and_the_connection_is_closed(
    proxy: ProxyProcess,
) -> None:
    """One byte every 0.2 s of a 100-byte body: a 408 once the body deadline has passed, then EOF."""
    with connect(proxy) as sock:
        sock.sendall(HEAD + b"Content-Length: 100\r\n\r\n")
        started = time.monotonic()
        sock.settimeout(0.2)
        while True:
            sock.sendall(b" ")
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break
            except TimeoutError:
                assert time.monotonic() - started < BODY_TIMEOUT + 3, "no answer after the body deadline"
        elapsed = time.monotonic() - started
        sock.settimeout(5)
        status, headers, error = read_response(sock)
        assert_error(status, error, 408, f"did not arrive within {BODY_TIMEOUT:g} s")
        assert BODY_TIMEOUT - 0.1 < elapsed < BODY_TIMEOUT + 1
        assert headers["connection"] == "close"
        assert sock.recv(1) == b""


def test_a_body_that_arrives_in_time_is_served_even_in_slow_parts(proxy: ProxyProcess) -> None:
    """The deadline is on the whole body, not on each part: parts 0.3 s apart within it are read whole
    and parsed (the answer then names the body's one mistake, n=2)."""
    body = json.dumps({"model": "a", "n": 2, "messages": [{"role": "user", "content": "hi"}]}).encode()
    with connect(proxy) as sock:
        sock.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % len(body))
        for part in (body[:10], body[10:20], body[20:]):
            time.sleep(0.3)
            sock.sendall(part)
        status, _, error = read_response(sock)
    assert_error(status, error, 400, "Only n=1 is supported")
