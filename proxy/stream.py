"""A Letta event stream as OpenAI SSE frames: role chunk, deltas, finish chunk, usage chunk, `[DONE]`.

An error once the 200 has gone out can only be told inside the stream: one `data: {"error": ...}`
frame, then `[DONE]`, so every client stops cleanly. A quiet upstream gets SSE comments, so that no
proxy or load balancer on the way closes the connection as idle.
"""

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

import anyio
import msgspec

from proxy import protocol
from proxy.errors import ProxyError
from proxy.observe import upstream_error
from proxy.translate import TurnTranslator, upstream_failure

log = logging.getLogger("proxy")

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keepalive\n\n"
_END = object()
_encode = msgspec.json.Encoder().encode


def frame(payload: msgspec.Struct) -> bytes:
    return b"data: " + _encode(payload) + b"\n\n"


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    """What every chunk of one completion repeats."""

    id: str
    created: int
    model: str

    def chunk(self, delta: protocol.Delta, finish_reason: str | None = None) -> bytes:
        choice = protocol.ChunkChoice(delta=delta, finish_reason=finish_reason)
        return frame(protocol.ChatCompletionChunk(self.id, self.created, self.model, [choice]))

    def usage(self, usage: protocol.Usage) -> bytes:
        return frame(protocol.ChatCompletionChunk(self.id, self.created, self.model, [], usage=usage))


def local_frames(header: ChunkHeader, text: str, include_usage: bool) -> list[bytes]:
    """An answer the proxy gives itself, framed as a stream: text, finish, usage, [DONE]."""
    frames = [
        header.chunk(protocol.Delta(role="assistant", content=text)),
        header.chunk(protocol.Delta(), "stop"),
    ]
    if include_usage:
        frames.append(header.usage(protocol.Usage(0, 0, 0)))
    return [*frames, DONE]


async def paced(events: AsyncGenerator[object, None], idle_seconds: float) -> AsyncIterator[object]:
    """The events, with KEEPALIVE whenever Letta stays silent for `idle_seconds`.

    The pending read is waited on, never cancelled, by a timeout: cancelling it would break the stream.
    """
    pending: asyncio.Future[object] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events, _END))
            done, _ = await asyncio.wait((pending,), timeout=idle_seconds)
            if not done:
                yield KEEPALIVE
                continue
            event, pending = pending.result(), None
            if event is _END:
                return
            yield event
    finally:
        with anyio.CancelScope(shield=True):  # a client gone mid-stream must still close the upstream
            if pending is not None:
                pending.cancel()
                await asyncio.wait((pending,))
            await events.aclose()


async def sse_frames(
    events: AsyncGenerator[object, None],
    translator: TurnTranslator,
    header: ChunkHeader,
    *,
    include_usage: bool,
    idle_seconds: float,
) -> AsyncIterator[bytes]:
    """Frames for one streamed turn; a client that leaves closes the Letta stream at once."""
    try:
        yield header.chunk(protocol.Delta(role="assistant", content=""))
        async with aclosing(paced(events, idle_seconds)) as paced_events:
            async for event in paced_events:
                if event is KEEPALIVE:
                    yield KEEPALIVE
                elif (delta := translator.feed(event)) is not None:
                    yield header.chunk(delta)
        if translator.stop_reason is None:
            raise upstream_failure(
                "The Letta stream ended before the turn was complete.", code="upstream_disconnected"
            )
        yield header.chunk(protocol.Delta(), translator.finish_reason)
        if include_usage and translator.usage is not None:
            yield header.usage(translator.usage)
    except ProxyError as error:
        log.warning("stream %s ended with an error: %s", header.id, error.message)
        upstream_error(error.code)
        yield frame(protocol.ErrorBody(error=error.detail()))
    yield DONE
