"""disconnect.py: a client's leaving, told on the ASGI receive channel, and a client that stops reading."""

import asyncio
from collections.abc import AsyncGenerator, Coroutine
from typing import Any

import pytest

from proxy.disconnect import ClientGone, ClientWatch, deliver

END = {"type": "http.response.body", "body": b"", "more_body": False}


class Client:
    """The two ASGI channels of one request, as a server offers them once the body has been read."""

    def __init__(self, reads: bool = True) -> None:
        self.left = asyncio.Event()
        self.reading = asyncio.Event()
        if reads:
            self.reading.set()
        self.sent: list[dict[str, Any]] = []
        self.receives = 0

    async def receive(self) -> dict[str, Any]:
        self.receives += 1
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        """Waits as Granian's `send` does while its buffers are full; returns at once once the client left."""
        if not self.left.is_set():
            await asyncio.wait(
                (asyncio.ensure_future(self.reading.wait()), asyncio.ensure_future(self.left.wait())),
                return_when=asyncio.FIRST_COMPLETED,
            )
        if not self.left.is_set():
            self.sent.append(message)


def run(main: Coroutine[Any, Any, None], seconds: float = 2) -> None:
    """Runs `main`, failing instead of hanging if it is not done in time."""

    async def guarded() -> None:
        await asyncio.wait_for(main, seconds)

    asyncio.run(guarded())


async def counted(closed: list[str], items: int = 10**6) -> AsyncGenerator[bytes, None]:
    try:
        for i in range(items):
            yield b"frame %d\n\n" % i
            await asyncio.sleep(0)
    finally:
        closed.append("closed")


# --- ClientWatch ---------------------------------------------------------------------------------


async def wait_in_queue(cleaned: list[bool]) -> None:
    """Work that never ends of itself, and says when its clean-up ran."""
    try:
        await asyncio.Event().wait()
    finally:
        cleaned.append(True)


def test_a_client_leaving_cancels_the_work_it_waits_for() -> None:
    """The waiting work is cancelled (its own clean-up runs) and the handler learns the client is gone."""
    cleaned: list[bool] = []

    async def main() -> None:
        client = Client()
        async with ClientWatch(client.receive) as watch:
            asyncio.get_running_loop().call_later(0.05, client.left.set)
            with pytest.raises(ClientGone) as gone:
                await watch.guard(wait_in_queue(cleaned))
            assert watch.gone and cleaned == [True]
            assert gone.value.status == 499 and not gone.value.retry_safe
            second = wait_in_queue(cleaned)
            with pytest.raises(ClientGone):  # later work is never started
                await watch.guard(second)
            assert cleaned == [True]

    run(main())


def test_work_done_before_the_client_leaves_returns_its_result_and_the_listener_stops() -> None:
    """A client that stays changes nothing; once the handler has its answer, nobody listens any more."""

    async def main() -> None:
        client = Client()
        before = asyncio.all_tasks()
        async with ClientWatch(client.receive) as watch:
            assert await watch.guard(asyncio.sleep(0.01, "turn")) == "turn"
            assert await watch.guard(asyncio.sleep(0, "again")) == "again"
        assert client.receives == 1  # one listener for the whole request
        assert asyncio.all_tasks() == before

    run(main())


def test_work_that_finishes_as_the_client_leaves_still_hands_back_its_result() -> None:
    """A lock taken in the same instant must reach the caller, who alone can release it."""

    async def taken_despite_cancel() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "release me"  # as a lock acquired just before the cancellation arrives
        return "never"

    async def main() -> None:
        client = Client()
        client.left.set()
        async with ClientWatch(client.receive) as watch:
            assert await watch.guard(taken_despite_cancel()) == "release me"

    run(main())


def test_the_handler_being_cancelled_cancels_the_work_too() -> None:
    """No work outlives the handler waiting for it."""
    cleaned: list[bool] = []

    async def main() -> None:
        client = Client()
        async with ClientWatch(client.receive) as watch:
            handler = asyncio.ensure_future(watch.guard(wait_in_queue(cleaned)))
            await asyncio.sleep(0.01)
            handler.cancel()
            with pytest.raises(asyncio.CancelledError):
                await handler
        assert cleaned == [True]

    run(main())


# --- deliver -------------------------------------------------------------------------------------


def test_a_complete_stream_is_sent_in_order_then_ended() -> None:
    """Every frame, in order, then the end of the body; the frames end of themselves."""
    closed: list[str] = []

    async def main() -> None:
        client = Client()
        await deliver(counted(closed, 3), client.send, client.receive, stall_seconds=1)
        assert [m["body"] for m in client.sent] == [b"frame 0\n\n", b"frame 1\n\n", b"frame 2\n\n", b""]
        assert client.sent[-1] == END and all(m["more_body"] for m in client.sent[:-1])

    run(main())
    assert closed == ["closed"]


def test_a_client_that_leaves_while_a_write_waits_has_its_frames_closed_at_once() -> None:
    """The case Litestar's Stream leaves to the garbage collector: stopped at a send, not at the frames."""
    closed: list[str] = []

    async def main() -> None:
        client = Client(reads=False)
        asyncio.get_running_loop().call_later(0.05, client.left.set)
        await deliver(counted(closed), client.send, client.receive, stall_seconds=60)
        assert closed == ["closed"] and client.sent == []

    run(main())


def test_a_client_that_takes_nothing_for_the_stall_limit_is_dropped() -> None:
    """A write waiting longer than `stall_seconds`: the frames are closed and the body is left unfinished."""
    closed: list[str] = []

    async def main() -> None:
        client = Client(reads=False)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await deliver(counted(closed), client.send, client.receive, stall_seconds=0.1)
        assert 0.1 <= loop.time() - started < 1
        assert closed == ["closed"] and END not in client.sent

    run(main())


def test_a_slow_reader_within_the_limit_gets_everything() -> None:
    """Only a write waiting the whole limit drops the stream; pauses shorter than it lose nothing."""
    closed: list[str] = []

    async def main() -> None:
        client = Client(reads=False)

        async def reads_in_bursts() -> None:
            while not client.left.is_set():
                client.reading.set()
                await asyncio.sleep(0.005)
                client.reading.clear()
                await asyncio.sleep(0.05)

        reader = asyncio.ensure_future(reads_in_bursts())
        await deliver(counted(closed, 5), client.send, client.receive, stall_seconds=0.2)
        reader.cancel()
        assert len(client.sent) == 6 and client.sent[-1] == END

    run(main())
    assert closed == ["closed"]


def test_frames_that_fail_are_closed_and_the_failure_raised() -> None:
    """An error from the frames themselves is not swallowed."""

    async def failing() -> AsyncGenerator[bytes, None]:
        yield b"one"
        raise ValueError("broken")

    async def main() -> None:
        client = Client()
        with pytest.raises(ValueError, match="broken"):
            await deliver(failing(), client.send, client.receive, stall_seconds=1)

    run(main())


def test_a_send_that_raises_still_closes_the_frames() -> None:
    """Some servers raise on a write to a gone client: the frames are closed all the same."""
    closed: list[str] = []

    async def main() -> None:
        client = Client()

        async def broken_send(_: dict[str, Any]) -> None:
            raise OSError("connection reset")

        with pytest.raises(OSError):
            await deliver(counted(closed), broken_send, client.receive, stall_seconds=1)
        assert closed == ["closed"]

    run(main())
