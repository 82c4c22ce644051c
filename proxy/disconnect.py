"""Clients that leave or stop reading: noticed on the ASGI channels, so that they never hold an agent.

Plain ASGI, whatever the framework: the client's leaving is the `http.disconnect` message on the
request's receive channel, and a client that stops reading shows as a `send` that does not return.
What Granian 2.8.7 (the embedded server) does, checked on loopback:

- after the body, `receive` waits until the client closes the connection or the response is complete,
  then answers `http.disconnect`, and again at once to every later call; a handler waiting for a turn
  hears of a client gone before any byte of the answer;
- a streamed body goes through a channel of 4 writes into hyper's write buffer (Granian's
  `http1_settings.max_buffer_size`, about 400 KiB by default) and the kernel's socket buffer; once all
  are full, `send` waits, with no time limit, until the client reads or leaves; it never raises, and
  after the client has gone it returns at once, so a sender that does not watch `receive` writes on
  into nothing;
- the disconnect is told to `receive` while a `send` is waiting.

Litestar's `Stream` watches `receive`, but it leaves its iterator unclosed when it stops at a `send`:
the Letta stream, the run and the agent's turn then wait for the garbage collector. `deliver` closes
the frames on every way out, and gives up on a client that takes no bytes for `stall_seconds`.
"""

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Mapping
from typing import Any, Self, TypeVar

import anyio

from proxy.errors import ProxyError

log = logging.getLogger("proxy")

T = TypeVar("T")
Message = Mapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
DISCONNECT = "http.disconnect"


async def _until_gone(receive: Receive) -> None:
    while (await receive())["type"] != DISCONNECT:
        pass


class ClientGone(ProxyError):
    """The request's client left: answered (to nobody, for the access log) as nginx's 499."""

    def __init__(self) -> None:
        super().__init__(499, "The client closed the request.", code="client_closed", retry_safe=False)


class ClientWatch:
    """While a handler waits (for the agent's queue, or a whole turn), whether its client is still there.

    It listens on `receive` only inside `async with`, after the framework has read the body and before
    the answer starts, so it never takes a message anyone else needs. One listener per request, started
    by the first `guard`.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._listener: asyncio.Task[None] | None = None
        self.gone = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.wait((self._listener,))

    async def _listen(self) -> None:
        await _until_gone(self._receive)
        self.gone = True

    async def guard(self, work: Coroutine[Any, Any, T]) -> T:
        """`work`'s result; if the client leaves first, `work` is cancelled and `ClientGone` raised.

        The work runs in a task of its own, cancelled once (asyncio's way, not a cancel scope's), so its
        clean-up (leaving the queue, closing the Letta request) runs unhurried. Should it finish anyway,
        its result is returned: a turn it started is the caller's to end.
        """
        if self.gone:
            work.close()
            raise ClientGone
        if self._listener is None:
            self._listener = asyncio.ensure_future(self._listen())
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait((task, self._listener), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():  # the client left, or this handler itself is being cancelled
                task.cancel()
                await asyncio.wait((task,))
        if task.cancelled():
            raise ClientGone
        return task.result()


def _body(chunk: bytes, more: bool) -> Message:
    return {"type": "http.response.body", "body": chunk, "more_body": more}


async def deliver(
    frames: AsyncGenerator[bytes, None], send: Send, receive: Receive, stall_seconds: float
) -> None:
    """Sends `frames` as the response body until they end, the client leaves, or a write waits longer
    than `stall_seconds` (the client took no bytes for that long: Granian's buffers are full).

    However it stops, the frames are closed here and now, so the Letta stream closes, its run is
    cancelled and the agent's turn ends. A dropped stream is not finished: the server closes the
    connection once the client reads or leaves (Granian has no write deadline; until then it keeps the
    writes it has, a bounded few).
    """
    listener = asyncio.ensure_future(_until_gone(receive))
    try:
        with anyio.CancelScope() as client_there:
            listener.add_done_callback(lambda _: client_there.cancel())
            async for chunk in frames:
                with anyio.move_on_after(stall_seconds) as waiting:
                    await send(_body(chunk, True))
                if waiting.cancelled_caught:
                    log.warning("a stream's client took no bytes for %g s: stream dropped", stall_seconds)
                    return
            await send(_body(b"", False))
    finally:
        listener.cancel()
        with anyio.CancelScope(shield=True):
            await frames.aclose()
