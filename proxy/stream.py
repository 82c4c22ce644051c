"""A Letta event stream as OpenAI SSE frames: role chunk, deltas, finish chunk, usage chunk, `[DONE]`.

An error once the 200 has gone out can only be told inside the stream: one `data: {"error": ...}`
frame, then `[DONE]`, so every client stops cleanly.
"""

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import msgspec

from proxy import protocol
from proxy.errors import ProxyError
from proxy.translate import TurnTranslator

log = logging.getLogger("proxy")

DONE = b"data: [DONE]\n\n"
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


async def sse_frames(
    events: AsyncGenerator[object, None], translator: TurnTranslator, header: ChunkHeader, include_usage: bool
) -> AsyncIterator[bytes]:
    """Frames for one streamed turn; stops reading Letta as soon as the client goes away."""
    try:
        yield header.chunk(protocol.Delta(role="assistant", content=""))
        async for event in events:
            delta = translator.feed(event)
            if delta is not None:
                yield header.chunk(delta)
        yield header.chunk(protocol.Delta(), translator.finish_reason)
        if include_usage and translator.usage is not None:
            yield header.usage(translator.usage)
    except ProxyError as error:
        log.warning("stream %s ended with an error: %s", header.id, error.message)
        yield frame(protocol.ErrorBody(error=error.detail()))
    finally:
        await events.aclose()
    yield DONE
