"""A chat completion as SSE frames: role chunk, deltas, finish chunk, usage chunk, `[DONE]`.

A failure once the 200 has gone out is one `data: {"error": ...}` frame, then `[DONE]`. The pacing
(read-ahead, keepalives, batching) is proxy/sse.py's, shared with the Responses API.
"""

from collections.abc import AsyncGenerator
from dataclasses import dataclass

import msgspec

from proxy.chat import protocol
from proxy.chat.encode import ChunkHeader, TurnTranslator
from proxy.errors import ErrorBody, ProxyError
from proxy.letta.wire import LettaMessage
from proxy.sse import turn_frames

DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.Encoder().encode


def frame(payload: msgspec.Struct) -> bytes:
    return b"data: " + _encode(payload) + b"\n\n"


async def local_frames(header: ChunkHeader, text: str, include_usage: bool) -> AsyncGenerator[bytes, None]:
    """An answer the proxy gives itself, framed as a stream in one write: text, finish, usage, [DONE]."""
    frames = [
        frame(header.chunk(protocol.Delta(role="assistant", content=text))),
        frame(header.chunk(protocol.Delta(), "stop")),
    ]
    if include_usage:
        frames.append(frame(header.usage(protocol.Usage(0, 0, 0))))
    yield b"".join([*frames, DONE])


@dataclass(frozen=True, slots=True)
class ChatFramer:
    """chat.completion.chunk frames: role chunk, deltas, finish chunk, usage chunk, `[DONE]`."""

    header: ChunkHeader
    include_usage: bool

    def opening(self) -> bytes:
        return frame(self.header.chunk(protocol.Delta(role="assistant", content="")))

    def event(self, event: LettaMessage, delta: protocol.Delta | None) -> bytes:
        return frame(self.header.chunk(delta)) if delta is not None else b""

    def closing(self, translator: TurnTranslator) -> bytes:
        finish = frame(self.header.chunk(protocol.Delta(), translator.finish_reason))
        if self.include_usage and translator.usage is not None:
            return finish + frame(self.header.usage(translator.usage)) + DONE
        return finish + DONE

    def failure(self, error: ProxyError) -> bytes:
        return frame(ErrorBody(error=error.detail())) + DONE


def sse_frames(
    events: AsyncGenerator[object, None],
    translator: TurnTranslator,
    header: ChunkHeader,
    *,
    include_usage: bool,
    idle_seconds: float,
) -> AsyncGenerator[bytes, None]:
    """A streamed chat completion."""
    return turn_frames(events, translator, ChatFramer(header, include_usage), idle_seconds=idle_seconds)
