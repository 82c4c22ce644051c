"""No configured key, client's or Letta's, ever appears in a response, an error message or a log line."""

import logging
from pathlib import Path

import httpx
import pytest
import respx
from litestar.testing import TestClient

from proxy.app import create_app
from tests.conftest import AGENT, make_settings, sse

CLIENT_KEY = "sk-client-secret-0123456789"
LETTA_KEY = "letta-secret-9876543210"
HELLO = {"model": AGENT["name"], "messages": [{"role": "user", "content": "hello"}]}


def test_secrets_stay_secret(
    tmp_path: Path, letta: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    """Through successes, auth failures and Letta errors that echo its token, no secret leaks anywhere."""
    caplog.set_level(logging.DEBUG)
    settings = make_settings(tmp_path, proxy_api_keys=CLIENT_KEY, letta_api_key=LETTA_KEY)
    responses: list[httpx.Response] = []
    with TestClient(create_app(settings)) as client:
        good = {"Authorization": f"Bearer {CLIENT_KEY}"}
        for headers in (
            {},
            {"Authorization": f"Bearer {CLIENT_KEY}x"},
            {"X-Api-Key": CLIENT_KEY[:-1]},
            {"Authorization": f"Bearer {CLIENT_KEY}", "X-Api-Key": "other"},
            good,
        ):
            responses.append(client.get("/v1/models", headers=headers))
        responses.append(client.post("/v1/chat/completions", json=HELLO, headers=good))
        for failure in (
            httpx.Response(401, json={"detail": f"Invalid token: Bearer {LETTA_KEY}"}),
            httpx.Response(500, json={"detail": f"crash while using {LETTA_KEY}"}),
            sse("stream_tokens.sse"),
        ):
            letta["send"].mock(return_value=failure)
            responses.append(
                client.post("/v1/chat/completions", json={**HELLO, "stream": True}, headers=good)
            )
            responses.append(client.post("/v1/chat/completions", json=HELLO, headers=good))
    assert [r.status_code for r in responses[:5]] == [401, 401, 401, 401, 200]
    assert letta["send"].calls.last.request.headers["authorization"] == f"Bearer {LETTA_KEY}"
    for response in responses:
        seen = response.text + str(response.headers)
        assert CLIENT_KEY not in seen and LETTA_KEY not in seen, seen
    assert "[redacted]" in responses[6].text
    assert CLIENT_KEY not in caplog.text and LETTA_KEY not in caplog.text
