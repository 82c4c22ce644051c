"""observe.py: request ids, one access-log line per request, Prometheus metrics; and the OpenAPI schema."""

import json
import logging
from pathlib import Path

import httpx
import pytest
import respx
from litestar.testing import TestClient
from prometheus_client import REGISTRY

from proxy.observe import JsonFormatter
from tests.conftest import AGENT, KEY, raw, sse

JSON = {"content-type": "application/json"}
HELLO = {"model": AGENT["name"], "messages": [{"role": "user", "content": "a private sentence"}]}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_request_id_is_honoured_or_made_and_always_returned(client: TestClient) -> None:
    """A sane X-Request-Id comes back as sent; a missing or unsafe one is replaced by a fresh id."""
    assert client.get("/v1/models", headers={"X-Request-Id": "req-42"}).headers["x-request-id"] == "req-42"
    made = client.get("/v1/models", headers={"X-Request-Id": "bad id\twith spaces"}).headers["x-request-id"]
    assert made != "bad id\twith spaces" and len(made) == 32
    assert len(client.get("/nowhere").headers["x-request-id"]) == 32


def test_one_access_line_per_request_with_agent_and_tokens_but_no_text_or_key(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The line carries request id, status, duration, agent and Letta's token counts; never words or keys."""
    caplog.set_level(logging.INFO, logger="proxy.access")
    client.post("/v1/chat/completions", json=HELLO, headers={"X-Request-Id": "turn-1"})
    [line] = [r for r in caplog.records if r.name == "proxy.access"]
    fields = {
        k: getattr(line, k) for k in ("request_id", "status", "agent", "prompt_tokens", "completion_tokens")
    }
    assert fields == {
        "request_id": "turn-1",
        "status": 200,
        "agent": AGENT["name"],
        "prompt_tokens": 712,
        "completion_tokens": 7,
    }
    assert line.duration_ms >= 0
    assert line.getMessage().endswith(" request_id=turn-1")  # the text line, too, names its request
    assert "private sentence" not in caplog.text and KEY not in caplog.text


def test_json_log_lines_are_json_with_their_fields() -> None:
    """PROXY_LOG_FORMAT=json: each record is one JSON object, extra fields included."""
    record = logging.makeLogRecord(
        {
            "name": "proxy.access",
            "msg": "GET /x %s",
            "args": (200,),
            "levelname": "INFO",
            "request_id": "r1",
            "status": 200,
        }
    )
    line = json.loads(JsonFormatter().format(record))
    assert (line["message"], line["request_id"], line["status"], line["logger"]) == (
        "GET /x 200",
        "r1",
        200,
        "proxy.access",
    )


def test_metrics_count_requests_by_route_status_and_model(client: TestClient) -> None:
    """Requests are counted with bounded labels: route templates and agent names, never raw paths."""
    labels = {"route": "/v1/chat/completions", "status": "200", "model": AGENT["name"]}
    before = sample("proxy_requests_total", **labels)
    client.post("/v1/chat/completions", json=HELLO)
    assert sample("proxy_requests_total", **labels) == before + 1
    unmatched = sample("proxy_requests_total", route="unmatched", status="404", model="-")
    client.get("/v1/some/random/path")
    assert sample("proxy_requests_total", route="unmatched", status="404", model="-") == unmatched + 1


def test_streams_record_time_to_first_chunk_and_close_their_gauge(
    client: TestClient, letta: respx.MockRouter
) -> None:
    """A stream adds one first-chunk observation and leaves no stream counted as open."""
    letta["send"].mock(return_value=sse("stream_tokens.sse"))
    before = sample("proxy_first_chunk_seconds_count", model=AGENT["name"])
    assert client.post("/v1/chat/completions", json={**HELLO, "stream": True}).status_code == 200
    assert sample("proxy_first_chunk_seconds_count", model=AGENT["name"]) == before + 1
    assert sample("proxy_open_streams") == 0


def test_turns_holding_their_agent_are_a_gauge(client: TestClient, letta: respx.MockRouter) -> None:
    """While Letta works on a turn, /metrics counts it as holding its agent; once answered, as nothing."""
    seen: list[tuple[float, float]] = []

    def answer(_: httpx.Request) -> httpx.Response:
        seen.append((sample("proxy_turns", state="holding"), sample("proxy_turns", state="waiting")))
        return httpx.Response(200, content=raw("send_message.json"), headers=JSON)

    letta["send"].mock(side_effect=answer)
    assert client.post("/v1/chat/completions", json=HELLO).status_code == 200
    assert seen == [(1, 0)]
    assert (sample("proxy_turns", state="holding"), sample("proxy_turns", state="waiting")) == (0, 0)


def test_upstream_errors_are_counted_by_kind(client: TestClient, letta: respx.MockRouter) -> None:
    """A Letta failure shows up under its kind."""
    letta["send"].mock(return_value=httpx.Response(500, json={"detail": "x"}))
    before = sample("proxy_upstream_errors_total", kind="upstream_error")
    client.post("/v1/chat/completions", json=HELLO)
    assert sample("proxy_upstream_errors_total", kind="upstream_error") == before + 1


def test_metrics_need_a_key(client: TestClient) -> None:
    """/metrics is behind the API keys and speaks Prometheus' text format."""
    assert client.get("/metrics", headers={"Authorization": ""}).status_code == 401
    response = client.get("/metrics")
    assert response.status_code == 200 and "proxy_requests_total" in response.text


def test_the_openapi_schema_describes_the_openai_routes(client: TestClient, tmp_path: Path) -> None:
    """/schema documents request and response models, OpenAI errors and both auth headers."""
    schema = client.get("/schema/openapi.json").json()
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ChatCompletionRequest"
    )
    assert chat["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ChatCompletion"
    )
    for status in ("400", "401", "404", "502", "503", "504"):
        assert chat["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ErrorBody"
        )
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "api_key"}
    assert schema["paths"]["/health"]["get"]["security"] == [{}]
