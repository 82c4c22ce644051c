"""chat/stream.py and sse.py: the exact SSE frames a client receives for real captured Letta streams."""

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from typing import Any

import anyio
import msgspec
import pytest

from proxy.chat.encode import ChunkHeader, TurnTranslator, completion
from proxy.chat.stream import DONE, sse_frames
from proxy.errors import ProxyError
from proxy.sse import KEEPALIVE, WRITE_BYTES, Paced
from tests.letta_captures import event, events

HEADER = ChunkHeader("chatcmpl-test", 1700000000, "bot")
CLIENT_TOOL = "get_weather"  # the client tool the approval capture calls
ROLE = {"role": "assistant", "content": ""}
TOKENS = ["Echo:", " stream", " me", " token", " by", " token"]


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


def writes(items: list[Any], include_usage: bool = True, fail_with: Exception | None = None) -> list[bytes]:
    """What the server is handed to send, one bytes per write."""

    async def collect() -> list[bytes]:
        return [f async for f in stream(_source(items, fail_with), include_usage)]

    return asyncio.run(collect())


def within(seconds: float, main: Coroutine[Any, Any, None]) -> None:
    """Runs `main`, failing instead of hanging if it is not done in time."""

    async def guarded() -> None:
        task = asyncio.create_task(main)
        done, _ = await asyncio.wait((task,), timeout=seconds)
        assert done == {task}, "hung"
        task.result()

    asyncio.run(guarded())


def split(sent: list[bytes]) -> list[bytes]:
    """The SSE frames in some writes, however the writes grouped them."""
    return [f + b"\n\n" for f in b"".join(sent).split(b"\n\n")[:-1]]


def frames(items: list[Any], include_usage: bool = True, fail_with: Exception | None = None) -> list[bytes]:
    return split(writes(items, include_usage, fail_with))


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
        delta(ROLE),
        *[delta({"content": token}) for token in TOKENS],
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
    # the failure comes in one batch with the tokens before it, which still go out first
    assert out[:3] == [delta(ROLE), delta({"content": "Echo:"}), delta({"content": " stream"})]
    assert len(out) == 5 and out[-1] == DONE
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
    out = frames(events("stream_tokens.sse")[:3], fail_with=ProxyError(502, "cut", type="server_error"))
    assert out[:3] == [delta(ROLE), delta({"content": "Echo:"}), delta({"content": " stream"})]
    assert json.loads(out[-2][6:])["error"]["message"] == "cut" and out[-1] == DONE and len(out) == 5


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


def paused_writes() -> list[bytes]:
    """The writes for the captured stream with Letta silent for 0.35 s after its first token (idle 0.1 s)."""
    captured = events("stream_tokens.sse")

    async def slow() -> AsyncGenerator[object, None]:
        yield captured[1]
        await asyncio.sleep(0.35)
        for item in captured[2:]:
            yield item

    async def collect() -> list[bytes]:
        return [f async for f in stream(slow(), idle_seconds=0.1)]

    return asyncio.run(collect())


def test_a_silent_upstream_gets_keepalive_comments_and_loses_nothing() -> None:
    """While Letta is quiet the client gets SSE comments; the event that was awaited still arrives."""
    out = split(paused_writes())
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


def test_events_already_in_go_out_as_one_write_and_so_does_the_end() -> None:
    """Fewer, larger writes: the role chunk at once, then a burst of tokens, then the end, each in one."""
    assert writes(events("stream_tokens.sse")) == [
        delta(ROLE),
        b"".join(delta({"content": token}) for token in TOKENS),
        delta({}, "stop")
        + chunk([], usage={"prompt_tokens": 771, "completion_tokens": 7, "total_tokens": 778})
        + DONE,
    ]


def test_keepalives_are_writes_of_their_own_between_the_events() -> None:
    """A keepalive is never merged into event frames, and comes only while nothing is waiting to be sent."""
    out = paused_writes()
    assert out[:2] == [delta(ROLE), delta({"content": "Echo:"})]
    assert len(out) >= 6 and set(out[2:-2]) == {KEEPALIVE}
    assert out[-2] == b"".join(delta({"content": token}) for token in TOKENS[1:])


def test_no_keepalive_unless_the_client_waited_a_whole_idle_period() -> None:
    """Events closer together than `idle_seconds` get none, however long the stream; a pause gets them."""

    async def steady() -> AsyncGenerator[object, None]:
        for i in range(12):
            await asyncio.sleep(0.3 if i == 11 else 0.02)
            yield i

    async def read() -> list[object]:
        async with Paced(steady(), 0.1) as batches:
            return [
                item async for batch in batches for item in ([batch] if isinstance(batch, bytes) else batch)
            ]

    out = asyncio.run(read())
    assert out[:11] == list(range(11)) and out[-1] == 11
    assert len(out[11:-1]) >= 2 and set(out[11:-1]) == {KEEPALIVE}


def test_time_the_client_spends_busy_is_not_idle_time() -> None:
    """A keepalive is for a client left waiting: one busy past `idle_seconds` waits a whole period again."""
    failures: list[dict[str, Any]] = []

    async def stalls() -> AsyncGenerator[object, None]:
        yield 1
        await asyncio.Event().wait()
        yield 2

    async def busy_client() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: failures.append(context))
        async with Paced(stalls(), 0.1) as batches:
            assert await anext(batches) == [1]  # waited from the start: the timer is set for 0.1 s
            await asyncio.sleep(0.15)  # busy sending as it fires
            waited = time.monotonic()
            assert await anext(batches) == KEEPALIVE
            assert time.monotonic() - waited >= 0.09

    within(1, busy_client())
    assert failures == []


def test_a_keepalive_never_overtakes_an_event_on_its_way_to_the_client() -> None:
    """The timer coming due in the same loop turn as an event queues nothing: the event wakes the client."""
    gate = asyncio.Event()

    async def late() -> AsyncGenerator[object, None]:
        await gate.wait()
        yield 1
        await asyncio.Event().wait()
        yield 2

    async def race() -> None:
        async with Paced(late(), 0.05) as batches:
            waiting = asyncio.ensure_future(anext(batches))
            await asyncio.sleep(0)  # the client waits, the timer is set
            gate.set()
            time.sleep(0.1)  # blocks the loop: next turn, the reader queues 1 and then the timer is due
            assert await waiting == [1]
            assert await anext(batches) == KEEPALIVE

    within(1, race())


def test_a_client_gone_after_the_role_chunk_closes_the_source_at_once() -> None:
    """The source comes started (Letta's first event read); leaving before any event still closes it."""
    closed = []

    async def source() -> AsyncGenerator[object, None]:
        try:
            yield None
            for item in events("stream_tokens.sse"):
                yield item
        finally:
            closed.append(True)

    async def leave_early() -> None:
        opened = source()
        await anext(opened)
        frames = stream(opened)
        assert await anext(frames) == delta(ROLE)
        await frames.aclose()  # type: ignore[attr-defined]
        assert closed == [True]

    asyncio.run(leave_early())


def test_leaving_during_a_pending_read_closes_the_source_and_leaves_no_task() -> None:
    """The read in progress is cancelled only on the way out, and the reader task is gone with it."""
    closed = []

    async def stalls() -> AsyncGenerator[object, None]:
        try:
            yield events("stream_tokens.sse")[1]
            await asyncio.Event().wait()
            yield None
        finally:
            closed.append(True)

    async def leave() -> None:
        before = asyncio.all_tasks()
        frames = stream(stalls(), idle_seconds=0.01)
        first = [await anext(frames) for _ in range(3)]
        assert first == [delta(ROLE), delta({"content": "Echo:"}), KEEPALIVE]
        await frames.aclose()  # type: ignore[attr-defined]
        assert closed == [True]
        assert asyncio.all_tasks() == before

    within(1, leave())


def test_closing_the_source_is_shielded_from_the_cancellation_of_a_gone_client() -> None:
    """The server cancels a gone client's response in a cancel scope; the upstream still closes fully."""
    closed = []

    async def slow_to_close() -> AsyncGenerator[object, None]:
        try:
            yield events("stream_tokens.sse")[1]
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.01)
            closed.append(True)

    async def serve() -> None:
        with anyio.CancelScope() as scope:
            frames = stream(slow_to_close())
            assert [await anext(frames) for _ in range(2)] == [delta(ROLE), delta({"content": "Echo:"})]
            scope.cancel()
            await anext(frames)
        assert closed == [True]

    anyio.run(serve)


def test_a_slow_client_holds_the_upstream_back() -> None:
    """The reader runs at most `backlog` events ahead of the client, plus the one it waits to queue."""
    read = []

    async def endless() -> AsyncGenerator[object, None]:
        while True:
            read.append(len(read))
            yield read[-1]
            await asyncio.sleep(0)  # as a real upstream would: an unbounded reader must not starve the loop

    async def lag() -> None:
        async with Paced(endless(), 60, backlog=4) as batches:
            await asyncio.sleep(0.05)
            assert len(read) == 5
            assert await anext(batches) == [0, 1, 2, 3]
            await asyncio.sleep(0.05)
            assert await anext(batches) == [4, 5, 6, 7]

    within(1, lag())


def test_leaving_with_a_full_queue_does_not_hang_on_a_source_that_fails_as_it_closes() -> None:
    """A reader stopped on the way out queues nothing more: nobody would take it from a full queue."""

    async def fails_on_close() -> AsyncGenerator[object, None]:
        try:
            yield 1
            await asyncio.Event().wait()
            yield 2
        finally:
            raise ValueError("close failed")

    async def leave() -> None:
        async with Paced(fails_on_close(), 60, backlog=1):
            await asyncio.sleep(0.01)  # 1 fills the queue; the reader waits on the source

    within(1, leave())


def test_a_cancellation_raised_by_the_source_itself_reaches_the_client() -> None:
    """Not only Exceptions: a source that raises CancelledError ends the stream, after its events."""

    async def cancels() -> AsyncGenerator[object, None]:
        yield 1
        raise asyncio.CancelledError

    async def read() -> None:
        async with Paced(cancels(), 60) as batches:
            assert await anext(batches) == [1]
            with pytest.raises(asyncio.CancelledError):
                await anext(batches)

    within(1, read())


def test_a_burst_of_events_goes_out_in_writes_of_bounded_size() -> None:
    """However large the events in at once, no write exceeds WRITE_BYTES by more than one frame: the server
    keeps a number of writes per stream, so their size bounds what a client that stops reading holds."""
    captured = events("stream_tokens.sse")
    text = "x" * 1000
    big = event({"message_type": "assistant_message", "content": text})
    burst = [*captured[:1], *[big] * 40, *captured[-2:]]  # the reader queues them faster than they go

    async def collect() -> list[bytes]:
        return [f async for f in stream(_source(burst))]

    out = asyncio.run(collect())
    framed = delta({"content": text})
    assert max(len(w) for w in out) < WRITE_BYTES + len(framed)
    assert split(out).count(framed) == 40  # nothing lost


@pytest.mark.parametrize(
    "capture", ["stream_tokens.sse", "stream_steps.sse", "stream_tool_call.sse", "stream_approval.sse"]
)
def test_one_capture_gives_the_same_message_streamed_and_whole(capture: str) -> None:
    """The chunks of a streamed turn, put together as a client SDK does, are the whole completion of the
    same events: text, tool calls, finish reason and usage."""
    tools = frozenset({CLIENT_TOOL})

    async def streamed() -> list[bytes]:
        out = sse_frames(
            _source(events(capture)),
            TurnTranslator(client_tools=tools),
            HEADER,
            include_usage=True,
            idle_seconds=60,
        )
        return [f async for f in out]

    whole = completion(events(capture), TurnTranslator(client_tools=tools), ChunkHeader("c", 0, "m"))
    chunks = [json.loads(f[6:]) for f in split(asyncio.run(streamed())) if f.startswith(b"data: {")]
    content, calls, finish, usage = "", {}, None, None
    for piece in chunks:
        usage = piece.get("usage") or usage
        for choice in piece["choices"]:
            finish = choice.get("finish_reason") or finish
            content += choice["delta"].get("content") or ""
            for call in choice["delta"].get("tool_calls") or ():
                known = calls.setdefault(call["index"], {"id": call.get("id"), "name": "", "arguments": ""})
                known["name"] += (call.get("function") or {}).get("name") or ""
                known["arguments"] += (call.get("function") or {}).get("arguments") or ""
    message = whole.choices[0].message
    assert content == (message.content or "")
    assert [(c["id"], c["name"], c["arguments"]) for c in calls.values()] == [
        (c.id, c.function.name, c.function.arguments) for c in message.tool_calls or ()
    ]
    assert finish == whole.choices[0].finish_reason
    assert usage == msgspec.to_builtins(whole.usage)
