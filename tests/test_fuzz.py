"""Hostile input: thousands of generated requests never get a 5xx, a trace, or a non-OpenAI error body."""

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from proxy.app import create_app
from tests.conftest import AGENT, KEY, agents_page, make_settings, mocked_letta
from tests.letta_captures import raw

pytestmark = pytest.mark.slow  # 5,100 requests; outside the fast loop

CHAT = "/v1/chat/completions"
FUZZ = settings(
    max_examples=1700,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "input_audio", "file", ""]) | st.text(max_size=6)},
    optional={
        "text": st.text(max_size=30) | json_values,
        "image_url": st.fixed_dictionaries(
            {
                "url": st.sampled_from(
                    [
                        "data:image/png;base64,iVBORw0KGgo=",
                        "https://x/y.png",
                        "data:,",
                        "data:image/png,raw",
                        "",
                    ]
                )
            }
        )
        | json_values,
    },
)
messages = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"])
        | st.text(max_size=6)
    },
    optional={
        "content": st.text(max_size=50) | st.lists(parts, max_size=3) | json_values,
        "name": st.text(max_size=10) | json_values,
        "tool_calls": json_values,
    },
)
requests = st.fixed_dictionaries(
    {"messages": st.lists(messages, max_size=5) | json_values},
    optional={
        "model": st.sampled_from([AGENT["name"], AGENT["id"], "nobody", ""]) | json_values,
        "stream": st.booleans() | json_values,
        "n": st.integers(-2, 3) | json_values,
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | json_values}) | json_values,
        "user": st.text(max_size=10) | json_values,
        "temperature": json_values,
        "tools": json_values,
    },
)


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app for all examples, with a Letta that answers every turn (streamed or not) from captures."""

    def turn(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content).get("streaming"):
            return httpx.Response(
                200, content=raw("stream_tokens.sse"), headers={"content-type": "text/event-stream"}
            )
        return httpx.Response(
            200, content=raw("send_message.json"), headers={"content-type": "application/json"}
        )

    with mocked_letta() as letta:
        letta.get("/v1/agents/").mock(side_effect=lambda request: agents_page(request, [AGENT]))
        letta.post(f"/v1/agents/{AGENT['id']}/messages").mock(side_effect=turn)
        letta.get(url__regex=r"/v1/conversations/[^/]+$").mock(return_value=httpx.Response(404, json={}))
        settings_ = make_settings(Path(tmp_path_factory.mktemp("fuzz")), proxy_agent_cache_seconds=60)
        with TestClient(create_app(settings_)) as client:
            client.headers["X-Api-Key"] = KEY
            yield client


def check(response: httpx.Response) -> None:
    """The property: never a server error, never a trace, errors always in OpenAI's shape."""
    assert response.status_code < 500, response.text
    assert "Traceback" not in response.text and 'File "' not in response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    elif response.headers["content-type"].startswith("text/event-stream"):
        assert response.text.endswith("data: [DONE]\n\n")


@FUZZ
@given(body=requests)
def test_near_valid_chat_requests(fuzz_client: TestClient, body: dict[str, object]) -> None:
    """Chat requests of the right outline with wrong, odd or hostile values in every field."""
    check(fuzz_client.post(CHAT, json=body))


@FUZZ
@given(body=json_values)
def test_arbitrary_json_bodies(fuzz_client: TestClient, body: object) -> None:
    """Any JSON value at all as the chat body."""
    check(fuzz_client.post(CHAT, json=body))


@FUZZ
@given(
    body=st.binary(max_size=200),
    content_type=st.sampled_from(["application/json", "text/plain", ""]),
    path=st.sampled_from([CHAT, "/v1/models", "/v1/models?limit=x", "/v1/", "/v1/chat/completions/x"]),
)
def test_arbitrary_bytes_on_every_route(
    fuzz_client: TestClient, body: bytes, content_type: str, path: str
) -> None:
    """Raw bytes with any content type, on each route and a few near it."""
    check(fuzz_client.post(path, content=body, headers={"content-type": content_type}))


RESPONSES = "/v1/responses"


def mostly(valid: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """Valid values three times in four, so that most requests get past the outline to the translation."""
    return st.one_of(valid, valid, valid, json_values)


input_parts = st.fixed_dictionaries(
    {"type": mostly(st.sampled_from(["input_text", "input_image", "input_file", "output_text", ""]))},
    optional={
        "text": mostly(st.text(max_size=30)),
        "image_url": mostly(st.sampled_from(["data:image/png;base64,iVBORw0KGgo=", "https://x/y.png", ""])),
    },
)
texts = mostly(st.text(max_size=20) | st.lists(input_parts, max_size=3))
items = mostly(
    st.fixed_dictionaries(
        {"role": mostly(st.sampled_from(["user", "assistant", "system", "developer", "tool"]))},
        optional={"type": mostly(st.sampled_from(["message", "x"])), "content": texts},
    )
    | st.fixed_dictionaries(
        {"type": st.just("function_call")},
        optional={
            "call_id": mostly(st.text(max_size=8)),
            "name": st.text(max_size=8),
            "arguments": st.text(),
        },
    )
    | st.fixed_dictionaries(
        {"type": st.just("function_call_output")},
        optional={"call_id": mostly(st.text(max_size=8)), "output": texts},
    )
    | st.fixed_dictionaries({"type": mostly(st.sampled_from(["reasoning", "item_reference", ""]))})
)
responses_requests = st.fixed_dictionaries(
    {"input": mostly(st.text(max_size=30) | st.lists(items, max_size=4))},
    optional={
        "model": mostly(st.sampled_from([AGENT["name"], AGENT["id"], "nobody", ""])),
        "stream": mostly(st.booleans()),
        "instructions": mostly(st.text(max_size=20)),
        "previous_response_id": mostly(st.sampled_from(["resp_", "resp_AAAA", ""]) | st.text(max_size=40)),
        "conversation": mostly(st.text(max_size=12) | st.fixed_dictionaries({"id": st.text(max_size=8)})),
        "tools": mostly(
            st.lists(
                st.fixed_dictionaries(
                    {"type": st.sampled_from(["function", "web_search"])},
                    optional={"name": mostly(st.text())},
                ),
                max_size=2,
            )
        ),
        "tool_choice": mostly(st.sampled_from(["none", "auto", "required", "bogus"])),
        "user": mostly(st.text(max_size=10)),
    },
)


@settings(FUZZ, max_examples=400)
@given(body=responses_requests)
def test_near_valid_responses_requests(fuzz_client: TestClient, body: dict[str, object]) -> None:
    """Responses requests of the right outline with odd values: errors in OpenAI's shape, streams that
    end in response.completed or response.failed."""
    response = fuzz_client.post(RESPONSES, json=body)
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        last = [frame for frame in response.text.split("\n\n") if frame][-1]
        assert last.startswith(("event: response.completed\n", "event: response.failed\n")), last
    else:
        check(response)
