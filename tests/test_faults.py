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
from proxy.chat.encode import APPROVAL_NOTE
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


@pytest.mark.parametrize("stream", [False, True])
def test_a_letta_that_accepts_then_hangs_is_a_504(proxy: TestClient, stream: bool) -> None:
    """A turn with no answer within LETTA_TIMEOUT is a 504 that must not be retried, before any stream."""
    response = chat(proxy, "hang", stream=stream)
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


def _cancelled(fault: FaultLetta, agent: str) -> bool:
    return _settles(lambda: f"POST /v1/agents/agent-{agent}/messages/cancel" in fault.requests)


@pytest.mark.slow
def test_a_whole_turn_dripped_byte_by_byte_ends_at_the_turn_deadline(proxy: TestClient) -> None:
    """No read ever times out, yet the turn is given up at PROXY_TURN_TIMEOUT_SECONDS: a 504."""
    started = time.monotonic()
    response = chat(proxy, "drip")
    error = error_of(response, 504)
    assert error["code"] == "upstream_timeout" and "took longer" in error["message"]
    assert response.headers["x-should-retry"] == "false"
    assert TURN_TIMEOUT <= time.monotonic() - started < TURN_TIMEOUT + 1


@pytest.mark.slow
def test_a_stream_that_pings_forever_ends_at_the_turn_deadline_and_its_run_is_cancelled(
    proxy: TestClient, fault: FaultLetta
) -> None:
    """Pings keep every gap short; the turn deadline still ends the stream in-band, and the run."""
    error = stream_error(chat(proxy, "pinging", stream=True))
    assert error["code"] == "upstream_timeout" and "took longer" in error["message"]
    assert _cancelled(fault, "pinging")


@pytest.mark.slow
def test_an_event_that_never_completes_ends_the_stream_after_letta_timeout(
    proxy: TestClient, fault: FaultLetta
) -> None:
    """Bytes trickle in, but no whole event within LETTA_TIMEOUT: the stream ends and the run is cancelled."""
    started = time.monotonic()
    error = stream_error(chat(proxy, "drip-event", stream=True))
    assert error["code"] == "upstream_timeout" and f"nothing for {TIMEOUT:g} s" in error["message"]
    assert time.monotonic() - started < TURN_TIMEOUT
    assert _cancelled(fault, "drip-event")


def test_a_whole_turn_without_a_stop_reason_is_a_502(proxy: TestClient) -> None:
    """`{}` is no answer: the turn is incomplete, as a stream without a stop reason is."""
    response = chat(proxy, "empty-turn")
    assert error_of(response, 502)["code"] == "upstream_incomplete"
    assert response.headers["x-should-retry"] == "false"


def test_an_html_answer_to_a_stream_is_a_502_before_the_stream_opens(proxy: TestClient) -> None:
    """A 200 that is not an event stream is refused as an HTTP error, never a 200 stream."""
    error = error_of(chat(proxy, "html-stream", stream=True), 502)
    assert "text/html" in error["message"]


@pytest.mark.parametrize("agent", ["huge", "huge-chunked"])
def test_a_whole_turn_larger_than_the_cap_is_a_502(proxy: TestClient, fault: FaultLetta, agent: str) -> None:
    """PROXY_MAX_UPSTREAM_BYTES bounds the answer, declared or not; the connection is dropped."""
    assert error_of(chat(proxy, agent), 502)["code"] == "upstream_too_large"


@pytest.mark.parametrize(
    ("agent", "status", "code", "retry_after", "should_retry", "said"),
    [
        ("busy", 429, "agent_busy", "1", None, "Another request (run_id=run-busy) is currently"),
        ("rate-limited", 429, "rate_limit_exceeded", "30", None, "Rate limit exceeded for LLM"),
        ("no-credits", 429, "insufficient_quota", None, "false", "Insufficient credits for LLM request."),
        ("quota", 429, "insufficient_quota", None, "false", "You have reached your plan's limit."),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_letta_refusals_keep_their_meaning(
    proxy: TestClient,
    agent: str,
    status: int,
    code: str,
    retry_after: str | None,
    should_retry: str | None,
    said: str,
    stream: bool,
) -> None:
    """Busy, rate limited, out of credits, awaiting approval: each as OpenAI clients understand it, with
    Letta's words as text (never a Python repr) and its Retry-After."""
    response = chat(proxy, agent, stream=stream)
    error = error_of(response, status)
    assert error["code"] == code
    assert said in error["message"] and "{" not in error["message"]
    assert response.headers.get("retry-after") == retry_after
    assert response.headers.get("x-should-retry") == should_retry


def test_letta_s_error_text_reaches_neither_client_nor_log_with_secrets(
    proxy: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Letta echoing our token: redacted for the client; its text, which echoes the user, is not logged."""
    response = chat(proxy, "leak")
    message = error_of(response, 502)["message"]
    assert LETTA_SECRET not in message and "[redacted]" in message
    assert LETTA_SECRET not in caplog.text and "hello" not in caplog.text


def test_letta_s_error_event_is_redacted(proxy: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    """The same for Letta's error event inside a stream."""
    response = chat(proxy, "leak-event", stream=True)
    assert "[redacted]" in stream_error(response)["message"]
    assert LETTA_SECRET not in response.text and LETTA_SECRET not in caplog.text


def _listings(fault: FaultLetta) -> int:
    """Agent pages asked so far (the start-up health check, in the background, may land at any time)."""
    return sum(request.startswith("GET /v1/agents/") for request in fault.requests)


def _models(proxy: TestClient, fault: FaultLetta, listing: str) -> Any:
    fault.listing = listing
    started = time.monotonic()
    response = proxy.get("/v1/models")
    assert time.monotonic() - started < TIMEOUT + 1, "the listing outlived LETTA_TIMEOUT"
    return response


def test_an_agent_list_that_does_not_advance_is_a_502(proxy: TestClient, fault: FaultLetta) -> None:
    """The same page again and again ends at the second repeat, not in an endless loop."""
    before = _listings(fault)
    assert "repeat" in error_of(_models(proxy, fault, "loop"), 502)["message"]
    assert _listings(fault) - before == 2


def test_a_letta_asking_to_wait_is_not_waited_out(proxy: TestClient, fault: FaultLetta) -> None:
    """A 429 with Retry-After 40 is passed on at once, neither slept through nor retried."""
    before = _listings(fault)
    response = _models(proxy, fault, "throttled")
    assert error_of(response, 429)["code"] == "rate_limit_exceeded" and _listings(fault) - before == 1
    assert response.headers["retry-after"] == "40"


def test_a_failing_agent_list_is_tried_three_times_quickly(proxy: TestClient, fault: FaultLetta) -> None:
    """A 500 is worth two more tries, no more, within the one deadline."""
    before = _listings(fault)
    assert error_of(_models(proxy, fault, "failing"), 502)["code"] == "upstream_error"
    assert _listings(fault) - before == 3


def test_a_silent_agent_list_is_given_up_within_letta_timeout(proxy: TestClient, fault: FaultLetta) -> None:
    """Retries included, the whole listing gets one LETTA_TIMEOUT."""
    assert error_of(_models(proxy, fault, "hang"), 504)["code"] == "upstream_timeout"
