"""Upstream faults, one per test, from a misbehaving Letta on loopback.

Each gets the right OpenAI error (or, mid-stream, an error frame then `[DONE]`), within its timeout;
afterwards no upstream request is left open, and the proxy still serves a healthy agent.
"""

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from proxy.app import create_app
from proxy.translate import APPROVAL_NOTE
from tests.conftest import KEY, make_settings
from tests.fault_letta import STATUSES, FaultLetta

TIMEOUT = 1.0  # LETTA_TIMEOUT for these tests, in seconds
TURN_TIMEOUT = 3.0  # PROXY_TURN_TIMEOUT_SECONDS: longer than the slow stream takes
MAX_UPSTREAM = 1024 * 1024  # PROXY_MAX_UPSTREAM_BYTES
DEADLINE = TURN_TIMEOUT + 1.5  # no request may take longer than this
LETTA_SECRET = "letta-secret-token"


@pytest.fixture(scope="module")
def fault() -> Iterator[FaultLetta]:
    server = FaultLetta().start()
    yield server
    server.stop()


@pytest.fixture
def proxy(fault: FaultLetta, tmp_path: Path) -> Iterator[TestClient]:
    """The app in front of the fault server; on the way out, proof that nothing upstream was left open."""
    settings = make_settings(
        tmp_path,
        letta_base_url=fault.url,
        letta_api_key=LETTA_SECRET,
        letta_timeout=TIMEOUT,
        proxy_turn_timeout_seconds=TURN_TIMEOUT,
        proxy_max_upstream_bytes=MAX_UPSTREAM,
        proxy_keepalive_seconds=0.1,
    )
    with TestClient(create_app(settings), timeout=30) as client:
        client.headers["X-Api-Key"] = KEY
        yield client
        fault.listing = "ok"
        assert chat(client, "ok").json()["choices"][0]["message"]["content"].startswith("Echo:")
        assert _settles(lambda: fault.in_flight == 0), f"{fault.in_flight} upstream requests left open"
    assert _settles(lambda: fault.connections == 0), f"{fault.connections} upstream connections leaked"


def _settles(condition: Any, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def chat(client: TestClient, agent: str, stream: bool = False) -> Any:
    started = time.monotonic()
    response = client.post(
        "/v1/chat/completions",
        json={"model": agent, "stream": stream, "messages": [{"role": "user", "content": "hello"}]},
    )
    assert time.monotonic() - started < DEADLINE, "the proxy waited past its timeout"
    return response


def frames(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [f for f in response.text.split("\n\n") if f]


def stream_error(response: Any) -> dict[str, Any]:
    """The in-band error of a stream that failed after its 200, checked to be followed by [DONE] alone."""
    out = frames(response)
    assert out[-1] == "data: [DONE]"
    error = json.loads(out[-2].removeprefix("data: "))["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    return response.json()["error"]


def test_refused_connections_are_a_503(tmp_path: Path) -> None:
    """Nothing listening at LETTA_BASE_URL: 503, and quickly."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    settings = make_settings(
        tmp_path, letta_base_url=f"http://127.0.0.1:{closed_port}", letta_connect_retries=1
    )
    with TestClient(create_app(settings)) as client:
        client.headers["X-Api-Key"] = KEY
        assert error_of(chat(client, "ok"), 503)["code"] == "upstream_unavailable"
        assert error_of(client.get("/v1/models"), 503)["code"] == "upstream_unavailable"


def test_a_letta_that_accepts_then_hangs_is_a_504(proxy: TestClient) -> None:
    """A turn with no answer within LETTA_TIMEOUT is a 504 that must not be retried."""
    response = chat(proxy, "hang")
    assert error_of(response, 504)["code"] == "upstream_timeout"
    assert response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("status", [s for s in STATUSES if s not in (404, 429)])
def test_letta_error_statuses_are_a_502_with_letta_s_message(proxy: TestClient, status: int) -> None:
    """Every 4xx/5xx from Letta is a 502 that names Letta's status and says what it said."""
    error = error_of(chat(proxy, f"status-{status}"), 502)
    assert error["code"] == "upstream_error" and f"answered {status}" in error["message"]
    assert f"fault status-{status}" in error["message"]


def test_letta_404_on_a_turn_is_model_not_found(proxy: TestClient) -> None:
    """A listed agent that Letta no longer knows is the client's 404."""
    assert error_of(chat(proxy, "status-404"), 404)["code"] == "model_not_found"


@pytest.mark.parametrize("stream", [False, True])
def test_letta_error_statuses_before_a_stream_are_real_statuses(proxy: TestClient, stream: bool) -> None:
    """A stream that Letta refuses is an HTTP error, never a 200."""
    assert chat(proxy, "status-500", stream=stream).status_code == 502


def test_invalid_json_from_letta_is_a_502(proxy: TestClient) -> None:
    """A body that is not JSON is Letta's fault, reported as such."""
    assert error_of(chat(proxy, "invalid-json"), 502)["type"] == "server_error"


def test_a_stream_cut_off_mid_message_ends_with_an_error_frame(proxy: TestClient) -> None:
    """The tokens before the cut arrive, then an error, then [DONE]."""
    response = chat(proxy, "cut-stream", stream=True)
    assert "Echo:" in response.text
    assert stream_error(response)["code"] == "upstream_disconnected"


def test_garbage_in_a_stream_ends_with_an_error_frame(proxy: TestClient) -> None:
    """Lines that are not SSE are skipped; an event that is not JSON is an error."""
    assert "malformed" in stream_error(chat(proxy, "garbage-stream", stream=True))["message"]


def test_a_stream_that_never_ends_times_out(proxy: TestClient) -> None:
    """A silent Letta stream is given up after LETTA_TIMEOUT, with keepalives meanwhile."""
    response = chat(proxy, "endless-stream", stream=True)
    assert ": keepalive" in frames(response)
    assert stream_error(response)["code"] == "upstream_timeout"


def test_a_slow_stream_is_kept_alive_and_completes(proxy: TestClient) -> None:
    """Gaps longer than PROXY_KEEPALIVE_SECONDS get comments; every token still arrives, then [DONE]."""
    out = frames(chat(proxy, "slow-stream", stream=True))
    assert out.count(": keepalive") >= 3 and out[-1] == "data: [DONE]"
    chunks = [json.loads(f[6:]) for f in out if f.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Echo: stream me token by token"


@pytest.mark.parametrize("stream", [False, True])
def test_stop_reason_error_is_an_error(proxy: TestClient, stream: bool) -> None:
    """A turn Letta ended with `error` is a 502, or an error frame once streaming."""
    response = chat(proxy, "stop-error", stream=stream)
    error = stream_error(response) if stream else error_of(response, 502)
    assert error["code"] == "error"


@pytest.mark.parametrize("stream", [False, True])
def test_stop_reason_max_steps_is_finish_length(proxy: TestClient, stream: bool) -> None:
    """A turn cut by Letta's step limit is finish_reason length, with its text."""
    response = chat(proxy, "stop-max_steps", stream=stream)
    if stream:
        finishes = [
            json.loads(f[6:])["choices"][0]["finish_reason"]
            for f in frames(response)
            if f.startswith("data: {")
        ]
        assert finishes[-1] == "length"
    else:
        assert response.json()["choices"][0]["finish_reason"] == "length"


def test_stop_reason_requires_approval_is_explained(proxy: TestClient) -> None:
    """A turn waiting for approval stops with a note saying so."""
    answer = chat(proxy, "stop-requires_approval").json()["choices"][0]
    assert answer["finish_reason"] == "stop" and answer["message"]["content"].endswith(APPROVAL_NOTE)


def test_an_error_event_inside_the_stream_ends_it_with_an_error_frame(proxy: TestClient) -> None:
    """Letta's `error_message` event becomes the stream's error frame, carrying Letta's error type."""
    assert stream_error(chat(proxy, "error-event", stream=True))["code"] == "internal_error"
