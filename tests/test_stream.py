"""stream.py: the exact SSE frames a client receives for real captured Letta streams."""

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from proxy.errors import ProxyError
from proxy.stream import DONE, KEEPALIVE, ChunkHeader, sse_frames
from proxy.translate import TurnTranslator
from tests.letta_captures import event, events

HEADER = ChunkHeader("chatcmpl-test", 1700000000, "bot")


async def _source(items: list[Any], fail_with: Exception | None = None) -> AsyncGenerator[object, None]:
    for item in items:
        yield item
    if fail_with is not None:
        raise fail_with


def stream(
    source: AsyncGenerator[object, None], include_usage: bool = True, idle_seconds: float = 60
) -> AsyncIterator[bytes]:
    return sse_frames(
        source, TurnTranslator(), HEADER, include_usage=include_usage, idle_seconds=idle_seconds
    )


def frames(items: list[Any], include_usage: bool = True, fail_with: Exception | None = None) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [f async for f in stream(_source(items, fail_with), include_usage)]

    return asyncio.run(collect())


def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
    body = {
        "object": "chat.completion.chunk",
        "id": "chatcmpl-test",
        "created": 1700000000,
        "model": "bot",
        "choices": choices,
        **extra,
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def delta(content: dict[str, Any], finish: str | None = None) -> bytes:
    return chunk([{"delta": content, "finish_reason": finish, "index": 0, "logprobs": None}])


def test_token_stream_frames_exactly() -> None:
    """Role chunk, one chunk per token, finish chunk, usage chunk, [DONE]: byte for byte."""
    assert frames(events("stream_tokens.sse")) == [
        delta({"role": "assistant", "content": ""}),
        *[delta({"content": token}) for token in ["Echo:", " stream", " me", " token", " by", " token"]],
        delta({}, "stop"),
        chunk([], usage={"prompt_tokens": 771, "completion_tokens": 7, "total_tokens": 778}),
        DONE,
    ]


def test_no_usage_chunk_unless_asked() -> None:
    """Without stream_options.include_usage the finish chunk is followed directly by [DONE]."""
    out = frames(events("stream_steps.sse"), include_usage=False)
    assert out[-2:] == [delta({}, "stop"), DONE]
    assert out[1] == delta({"content": "Echo: stream me (steps)"})


def test_an_error_mid_stream_is_one_error_frame_then_done() -> None:
    """After the 200, a failure is told in-band so the client stops cleanly, and nothing follows [DONE]."""
    failure = event({"message_type": "stop_reason", "stop_reason": "llm_api_error"})
    out = frames([*events("stream_tokens.sse")[:3], failure])
    assert out[-1] == DONE
    error = json.loads(out[-2][len(b"data: ") :])
    assert error == {
        "error": {
            "message": "The agent's turn failed in Letta (stop reason 'llm_api_error').",
            "type": "server_error",
            "param": None,
            "code": "llm_api_error",
        }
    }
    assert b'finish_reason":"stop' not in b"".join(out)


def test_an_upstream_failure_raised_by_the_source_is_reported_in_band() -> None:
    """A broken upstream connection mid-stream also ends in an error frame and [DONE]."""
    out = frames(events("stream_tokens.sse")[:2], fail_with=ProxyError(502, "cut", type="server_error"))
    assert json.loads(out[-2][6:])["error"]["message"] == "cut" and out[-1] == DONE


def test_the_source_is_closed_when_the_client_goes_away() -> None:
    """Stopping early closes the Letta stream, so no upstream read outlives the client."""
    closed = []

    async def source() -> AsyncGenerator[object, None]:
        try:
            for item in events("stream_tokens.sse"):
                yield item
        finally:
            closed.append(True)

    async def read_two() -> None:
        frames = stream(source())
        await anext(frames)
        await anext(frames)
        await frames.aclose()  # type: ignore[attr-defined]

    asyncio.run(read_two())
    assert closed == [True]


def test_a_silent_upstream_gets_keepalive_comments_and_loses_nothing() -> None:
    """While Letta is quiet the client gets SSE comments; the event that was awaited still arrives."""
    captured = events("stream_tokens.sse")

    async def slow() -> AsyncGenerator[object, None]:
        yield captured[1]
        await asyncio.sleep(0.35)
        for item in captured[2:]:
            yield item

    async def collect() -> list[bytes]:
        return [f async for f in stream(slow(), idle_seconds=0.1)]

    out = asyncio.run(collect())
    assert out.count(KEEPALIVE) >= 2
    content = [
        json.loads(f[6:])["choices"][0]["delta"].get("content")
        for f in out
        if f.startswith(b"data: {") and json.loads(f[6:])["choices"]
    ]
    assert "".join(c for c in content if c) == "Echo: stream me token by token"
    assert out[-1] == DONE


def test_a_stream_that_ends_without_a_stop_reason_is_an_error() -> None:
    """Letta's stream closing before its stop_reason means the turn is incomplete: said so, not `stop`."""
    out = frames(events("stream_tokens.sse")[:4])
    assert json.loads(out[-2][6:])["error"]["code"] == "upstream_disconnected" and out[-1] == DONE
