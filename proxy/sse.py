"""One streamed turn as SSE writes, whatever the API: its `Framer` (chat chunks, Responses events) says
what each Letta event becomes; this module paces them.

An error once the 200 has gone out can only be told inside the stream, as the framer's failure frames,
so every client stops cleanly. A quiet upstream gets SSE comments, so that no proxy or load balancer on
the way closes the connection as idle.

What one stream whose client stops reading may hold, layer by layer (bench/README.md measures it with
200 such streams):
- Letta's connection: aiohttp's read buffer (`proxy.letta.client.READ_BUFSIZE`); past a few of them aiohttp
  stops reading from Letta, whose own socket buffers then fill, and Letta waits;
- here: READ_AHEAD decoded events, plus one write of at most WRITE_BYTES and one frame;
- Granian: a channel of 4 writes, then hyper's write buffer of up to 16 writes (within Granian's
  `http1_settings.max_buffer_size`, 400 KiB by default): so about 20 x WRITE_BYTES;
- the kernel: the socket's send buffer (`net.ipv4.tcp_wmem`), outside the process's memory.
A client that takes no bytes for PROXY_STALL_SECONDS is dropped (`proxy.disconnect.deliver`): all but
what Granian and the kernel hold is freed at once, and those go with the connection.
"""

import asyncio
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol, Self, cast

import anyio

from proxy.chat import protocol
from proxy.chat.encode import TurnTranslator
from proxy.errors import ProxyError, upstream_failure
from proxy.letta.wire import LettaMessage
from proxy.observe import upstream_error

log = logging.getLogger("proxy")

KEEPALIVE = b": keepalive\n\n"
READ_AHEAD = 16  # events read before the client takes them; beyond, a slow client holds Letta back
WRITE_BYTES = 4096  # a write closes once this full: the server keeps up to about 20 writes per stream
_IDLE = object()  # queued by the idle timer for a client waiting on a silent upstream


@dataclass(frozen=True, slots=True)
class _End:
    """The last item a reader queues: how the upstream stopped."""

    error: BaseException | None = None


class Paced:
    """The events, in batches of those already in, with KEEPALIVE whenever Letta is silent for `idle_seconds`.

    One task per stream reads ahead into a bounded queue, so a slow client holds the upstream back, and
    nothing ever cancels the upstream read (cancelling `anext` would finalize the generator). The idle
    timer is armed once per idle period, not per event, and wakes the client through the queue itself.
    However the block is left, the reader stops and the events are closed.
    """

    def __init__(
        self, events: AsyncGenerator[object, None], idle_seconds: float, backlog: int = READ_AHEAD
    ) -> None:
        self._events = events
        self._idle_seconds = idle_seconds
        self._queue: asyncio.Queue[object] = asyncio.Queue(backlog)
        self._end: _End | None = None
        self._waiting_since: float | None = None  # set while the client waits on an empty queue
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop
        self._reader: asyncio.Task[None]

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with anyio.CancelScope(shield=True):  # a client gone mid-stream must still close the upstream
            self._reader.cancel()
            await asyncio.wait((self._reader,))
            await self._events.aclose()

    async def _read(self) -> None:
        try:
            async for event in self._events:
                await self._queue.put(event)
            end = _End()
        except (Exception, asyncio.CancelledError) as error:  # a CancelledError of Letta's own included
            end = _End(error)
        if not self._reader.cancelling():  # else nobody reads on, and a full queue would block for good
            await self._queue.put(end)

    def _arm(self, due: float) -> None:
        self._timer = self._loop.call_at(due, self._idle, due)

    def _idle(self, due: float) -> None:
        """At `due`: a keepalive if the client has waited since `due - idle_seconds`, else a later check."""
        self._timer = None
        if self._waiting_since is None or not self._queue.empty():
            return  # the client is busy, or an event is on its way to it
        if self._waiting_since + self._idle_seconds <= due:
            self._queue.put_nowait(_IDLE)
        else:
            self._arm(self._waiting_since + self._idle_seconds)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> list[object] | bytes:
        queue = self._queue
        if self._end is None:
            batch: list[object] = []
            if queue.empty():
                self._waiting_since = self._loop.time()
                if self._timer is None:
                    self._arm(self._waiting_since + self._idle_seconds)
                try:
                    first = await queue.get()
                finally:
                    self._waiting_since = None
                if first is _IDLE:  # only ever queued into an empty queue, so nothing is ahead of it
                    return KEEPALIVE
                batch.append(first)
            while not queue.empty():
                batch.append(queue.get_nowait())
            if not isinstance(batch[-1], _End):
                return batch
            self._end = batch.pop()
            if batch:
                return batch
        if self._end.error is not None:
            raise self._end.error
        raise StopAsyncIteration


class Framer(Protocol):
    """One API's frames for a streamed turn: the chat chunks, or the Responses API's events."""

    def opening(self) -> bytes:
        """Frames sent as soon as the stream opens (may be empty)."""
        ...

    def event(self, event: LettaMessage, delta: protocol.Delta | None) -> bytes:
        """Frames for one Letta event and the delta the translator made of it (may be empty)."""
        ...

    def closing(self, translator: TurnTranslator) -> bytes:
        """The end of a turn that finished: how it stopped, its usage."""
        ...

    def failure(self, error: ProxyError) -> bytes:
        """The end of a turn that failed once the stream was open."""
        ...


async def turn_frames(
    events: AsyncGenerator[object, None],
    translator: TurnTranslator,
    framer: Framer,
    *,
    idle_seconds: float,
) -> AsyncGenerator[bytes, None]:
    """Frames for one streamed turn; a client that leaves closes the Letta stream at once.

    The frames of events that are in together go out as one write, and so does the end of the stream.
    """
    unsent: list[bytes] = []  # so that an error one event of a batch raises follows the frames before it
    try:
        async with Paced(events, idle_seconds) as batches:
            if opening := framer.opening():
                yield opening
            async for batch in batches:
                if isinstance(batch, bytes):
                    yield batch
                    continue
                size = 0
                for event in batch:
                    letta_event = cast(LettaMessage, event)
                    if framed := framer.event(letta_event, translator.feed(letta_event)):
                        unsent.append(framed)
                        size += len(framed)
                        if size >= WRITE_BYTES:
                            yield b"".join(unsent)
                            unsent.clear()
                            size = 0
                if unsent:
                    yield b"".join(unsent)
                    unsent.clear()
        if translator.stop_reason is None:
            raise upstream_failure(
                "The Letta stream ended before the turn was complete.", code="upstream_disconnected"
            )
        unsent.append(framer.closing(translator))
    except ProxyError as error:
        log.warning("a stream ended with an error: %s", error.message)
        upstream_error(error.code)
        unsent.append(framer.failure(error))
    yield b"".join(unsent)
