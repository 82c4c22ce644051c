"""One turn at a time per agent: Letta agents process turns one by one, so the proxy queues the rest.

Waiters are served in arrival order (asyncio.Lock is fair) and wait a bounded time; a queue entry lives
only while someone holds or waits for it, so idle agents cost nothing. The counts of turns holding and
waiting are the process's `proxy_turns` gauge: turns piling up behind busy agents show there.
"""

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass

from proxy.errors import ProxyError


@dataclass
class _Line:
    lock: asyncio.Lock
    users: int = 0


class TurnQueue:
    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._lines: dict[str, _Line] = {}
        self.holding = 0  # turns of this process holding their key now
        self.waiting = 0  # and waiting for it

    async def enter(self, key: str) -> Callable[[], None]:
        """Waits for `key`'s turn; the returned function ends it (calling it twice is harmless)."""
        self.waiting += 1
        try:
            release = await self._acquire(key)
        finally:
            self.waiting -= 1
        self.holding += 1
        ended = False

        def end() -> None:
            nonlocal ended
            if not ended:
                ended = True
                self.holding -= 1
                release()

        return end

    async def _acquire(self, key: str) -> Callable[[], None]:
        """Waits for `key`; returns what frees it, to be called once."""
        line = self._lines.setdefault(key, _Line(asyncio.Lock()))
        line.users += 1
        try:
            async with asyncio.timeout(self._timeout):
                await line.lock.acquire()
        except BaseException as exc:
            self._leave(key, line)
            if isinstance(exc, TimeoutError):
                raise self._busy() from None
            raise

        def release() -> None:
            line.lock.release()
            self._leave(key, line)

        return release

    def _leave(self, key: str, line: _Line) -> None:
        line.users -= 1
        if line.users == 0:
            del self._lines[key]

    def _busy(self) -> ProxyError:
        return ProxyError(
            429,
            "The agent is busy with other turns; try again shortly.",
            type="requests",
            code="agent_busy",
            headers={"Retry-After": str(max(1, math.ceil(self._timeout)))},
        )
