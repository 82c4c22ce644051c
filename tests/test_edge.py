"""What a client without the right key or route sees: every 404 and 405 in OpenAI's shape, /metrics
only for keys scoped to no agent, a repeated key header refused, and an access line that a path cannot
forge."""

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import respx
from litestar.testing import TestClient

from proxy.app import create_app
from proxy.observe import printable
from tests.conftest import KEY, make_settings

SCOPED = "sk-scoped"


@pytest.fixture
def scoped_client(tmp_path: Path, letta: respx.MockRouter) -> Iterator[TestClient]:
    """The app with one key scoped to an agent and one unscoped (KEY)."""
    settings = make_settings(tmp_path, proxy_api_keys=f"{KEY},{SCOPED}:support-bot")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def is_openai_error(response: object, status: int) -> dict[str, object]:
    assert response.status_code == status  # type: ignore[attr-defined]
    assert response.headers["content-type"] == "application/json"  # type: ignore[attr-defined]
    error = response.json()["error"]  # type: ignore[attr-defined]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize("path", ["/schema/unknown", "/schema/unknown.json", "/v1/nowhere", "/nowhere"])
def test_every_unknown_route_is_the_same_json_404(client: TestClient, path: str) -> None:
    """Including the unknown /schema/ paths, which Litestar answers with an HTML page of its own."""
    error = is_openai_error(client.get(path), 404)
    assert error["message"] == "Unknown URL. The OpenAI routes are under /v1; /schema lists every route."


def test_a_wrong_method_is_a_json_405_with_allow(client: TestClient) -> None:
    """405 keeps Litestar's Allow header."""
    response = client.delete("/health")
    is_openai_error(response, 405)
    assert "GET" in response.headers["allow"]


def test_the_schema_itself_is_still_served(client: TestClient) -> None:
    """The JSON-404 hook leaves the schema page and its JSON alone."""
    assert client.get("/schema").headers["content-type"].startswith("text/html")
    assert client.get("/schema/openapi.json").json()["info"]["title"] == "letta-openai-proxy"


def test_metrics_are_for_unscoped_keys_and_a_scoped_key_sees_an_unknown_route(
    scoped_client: TestClient,
) -> None:
    """The metrics name every agent: a scoped key gets exactly the 404 of a route that does not exist."""
    assert scoped_client.get("/metrics", headers={"X-Api-Key": KEY}).status_code == 200
    hidden = scoped_client.get("/metrics", headers={"X-Api-Key": SCOPED})
    unknown = scoped_client.get("/no-such-route", headers={"X-Api-Key": SCOPED})
    is_openai_error(hidden, 404)
    assert hidden.content == unknown.content
    assert scoped_client.get("/metrics").status_code == 401


@pytest.mark.parametrize(
    "headers",
    [
        [("Authorization", f"Bearer {KEY}"), ("Authorization", f"Bearer {KEY}")],
        [("Authorization", "Bearer sk-wrong"), ("Authorization", f"Bearer {KEY}")],
        [("X-Api-Key", KEY), ("X-Api-Key", "sk-wrong")],
    ],
)
def test_a_key_header_sent_twice_is_a_401(scoped_client: TestClient, headers: list[tuple[str, str]]) -> None:
    """Whichever comes first, two Authorization (or X-Api-Key) headers are ambiguous: refused, though
    the valid one alone is accepted."""
    assert scoped_client.get("/v1/models", headers=headers).status_code == 401
    valid = [header for header in headers if KEY in header[1]][:1]
    assert scoped_client.get("/v1/models", headers=valid).status_code == 200


def test_a_path_cannot_forge_an_access_line(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    """Control characters in the path (sent as %0a, %1b...) are escaped: one request, one line."""
    caplog.set_level(logging.INFO, logger="proxy.access")
    client.get("/x%0a2026-01-01 INFO proxy.access: GET /admin 200%0d%1b[2J%e2%80%a8")
    [record] = [r for r in caplog.records if r.name == "proxy.access"]
    line = record.getMessage()
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\u2028" not in line
    assert line.startswith("GET /x\\n2026-01-01 INFO proxy.access: GET /admin 200\\r\\x1b[2J\\u2028 404 ")
    assert record.path == "/x\\n2026-01-01 INFO proxy.access: GET /admin 200\\r\\x1b[2J\\u2028"


def test_printable_text_is_left_as_it_is() -> None:
    """Ordinary paths, non-ASCII letters included, are logged unchanged."""
    assert printable("/v1/chat/completions") == "/v1/chat/completions"
    assert printable("/v1/modèles/ünï") == "/v1/modèles/ünï"
