"""Decoding Letta's wire format: real captures, cut at every byte, and Letta's error shapes."""

import json
import time

import pytest

from proxy.errors import ProxyError
from proxy.letta.wire import MAX_EVENT_BYTES, SSEDecoder, decode_agents, decode_turn, error_text
from tests.letta_captures import raw, sse_data, wire


@pytest.mark.parametrize("name", ["stream_tokens.sse", "stream_steps.sse", "stream_tool_call.sse"])
def test_a_capture_decodes_the_same_however_its_bytes_are_cut(name: str) -> None:
    """TCP delivers Letta's stream in arbitrary pieces; every split point must give the same events."""
    body = raw(name)
    whole = [(m.message_type, m.id, m.content, m.tool_calls) for m in SSEDecoder().feed(body)]
    assert [m[0] for m in whole] == [data["message_type"] for data in sse_data(name)]
    for cut in range(1, len(body), 7):
        decoder = SSEDecoder()
        pieces = [*decoder.feed(body[:cut]), *decoder.feed(body[cut:])]
        assert [(m.message_type, m.id, m.content, m.tool_calls) for m in pieces] == whole
        assert decoder.done


def test_nothing_after_done_is_read() -> None:
    decoder = SSEDecoder()
    body = raw("stream_tokens.sse") + b"data: {broken\n\n"
    assert len(list(decoder.feed(body))) == len(sse_data("stream_tokens.sse")) and decoder.done


def test_comments_and_unknown_fields_and_types_pass_quietly() -> None:
    event = b'{"message_type":"event_message","event_type":"x","new":{"a":1}}'
    body = b": keepalive\n\nretry: 10\n\ndata: " + event + b"\n\n"
    assert [m.message_type for m in SSEDecoder().feed(body)] == ["event_message"]


@pytest.mark.parametrize(
    ("data", "shown", "code"),
    [
        (
            {
                "message_type": "error_message",
                "run_id": "run-1",
                "error_type": "llm_error",
                "message": "boom",
            },
            "(llm_error): boom",
            "llm_error",
        ),
        ({"error": "database gone", "code": "INTERNAL_SERVER_ERROR"}, "database gone", "upstream_error"),
        ({"detail": "agent is busy"}, "agent is busy", "upstream_error"),
    ],
)
def test_every_shape_of_letta_error_event_raises_a_502(
    data: dict[str, object], shown: str, code: str
) -> None:
    """Letta sends `event: error` with its error message, a bare error, or a FastAPI detail."""
    body = b'data: {"message_type":"ping"}\n\nevent: error\ndata: ' + json.dumps(data).encode() + b"\n\n"
    messages = SSEDecoder().feed(body)
    assert next(messages).message_type == "ping"  # what came before the error still gets through
    with pytest.raises(ProxyError) as caught:
        next(messages)
    assert caught.value.status == 502 and not caught.value.retry_safe
    assert shown in caught.value.message and caught.value.code == code


def test_an_event_name_lasts_only_until_its_blank_line() -> None:
    body = b'event: error\n\ndata: {"message_type":"ping"}\n\n'
    assert [m.message_type for m in SSEDecoder().feed(body)] == ["ping"]


def test_a_malformed_event_is_a_502() -> None:
    with pytest.raises(ProxyError, match="malformed") as caught:
        list(SSEDecoder().feed(b'data: {"message_type": \n\n'))
    assert caught.value.status == 502


def test_a_line_that_never_ends_is_refused_before_it_fills_memory() -> None:
    decoder = SSEDecoder()
    chunk = b"x" * (1024 * 1024)
    with pytest.raises(ProxyError, match="larger"):
        for _ in range(MAX_EVENT_BYTES // len(chunk) + 1):
            list(decoder.feed(chunk))


def test_a_whole_turn_gives_its_messages_then_stop_reason_then_usage() -> None:
    captured = wire("send_message_tool_call.json")
    events = decode_turn(raw("send_message_tool_call.json")).events()
    assert [e.message_type for e in events] == [
        *(m["message_type"] for m in captured["messages"]),
        "stop_reason",
        "usage_statistics",
    ]
    assert events[-1].total_tokens == captured["usage"]["total_tokens"]


def test_malformed_answers_and_agent_lists_are_502s() -> None:
    for decode in (decode_turn, decode_agents):
        with pytest.raises(ProxyError) as caught:
            decode(b"<html>502 Bad Gateway</html>")
        assert caught.value.status == 502


def test_an_agent_record_keeps_id_name_and_creation_time() -> None:
    [agent] = decode_agents(raw("list_agents.json"))
    captured = wire("list_agents.json")[0]
    assert (agent.id, agent.name) == (captured["id"], captured["name"])
    assert agent.created_at is not None and agent.created_at.isoformat()[:19] == captured["created_at"][:19]


def test_a_long_line_costs_its_length_not_its_square() -> None:
    """An 8 MiB event in 1 KiB pieces: each piece is kept, not re-joined with all before it."""
    text = "x" * (8 * 1024 * 1024)
    body = b'data: {"message_type":"assistant_message","content":"' + text.encode() + b'"}\n\n'
    decoder = SSEDecoder()
    started = time.perf_counter()
    messages = [m for i in range(0, len(body), 1024) for m in decoder.feed(body[i : i + 1024])]
    assert time.perf_counter() - started < 1.0
    assert [len(m.content or "") for m in messages] == [len(text)]


def test_a_whole_turn_without_a_stop_reason_is_incomplete() -> None:
    """`{}` is not an empty answer but a broken one, as a stream without a stop reason is."""
    with pytest.raises(ProxyError) as caught:
        decode_turn(b"{}")
    assert (caught.value.status, caught.value.code, caught.value.retry_safe) == (
        502,
        "upstream_incomplete",
        False,
    )


SECRET = "letta-token-123"


@pytest.mark.parametrize(
    "data",
    [
        {"message_type": "error_message", "error_type": "internal_error", "message": f"bad key {SECRET}"},
        {"error": {"message": f"bad key {SECRET}", "type": "x"}, "code": "INTERNAL_SERVER_ERROR"},
        {"detail": f"bad key {SECRET}"},
    ],
)
def test_letta_s_error_events_are_passed_on_as_text_without_our_token(data: dict[str, object]) -> None:
    body = b"event: error\ndata: " + json.dumps(data).encode() + b"\n\n"
    with pytest.raises(ProxyError) as caught:
        list(SSEDecoder(SECRET).feed(body))
    assert "bad key [redacted]" in caught.value.message and SECRET not in caught.value.message
    assert "{" not in caught.value.message


def test_an_error_message_in_a_whole_turn_is_redacted() -> None:
    """A turn's `error_message`, raised later by the translator, has lost our token already."""
    answer = {
        **wire("send_message.json"),
        "messages": [{"message_type": "error_message", "message": f"bad key {SECRET}"}],
    }
    [message] = decode_turn(json.dumps(answer).encode(), SECRET).messages
    assert message.failure().message.endswith("bad key [redacted]")


@pytest.mark.parametrize(
    ("detail", "text"),
    [
        ("plain words", "plain words"),
        (
            [{"type": "missing", "loc": ["body", "messages"], "msg": "Field required", "input": "words"}],
            "body.messages: Field required",
        ),
        ({"code": "PENDING_APPROVAL", "message": "waiting", "pending_request_id": "m-1"}, "waiting"),
        ({"type": "llm_error", "detail": "deep"}, "deep"),
        ({"nothing": "useful"}, ""),
        (None, ""),
    ],
)
def test_letta_s_error_details_read_as_text(detail: object, text: str) -> None:
    """FastAPI's validation list, Letta's dicts: text, never a repr, never the `input` echoed back."""
    assert error_text(detail) == text
