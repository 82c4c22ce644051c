"""One turn at a time per agent: Letta agents process turns one by one, so the proxy queues the rest.

Waiters are served in arrival order (asyncio.Lock is fair) and wait a bounded time; a queue entry lives
only while someone holds or waits for it, so idle agents cost nothing.
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

    def busy(self, key: str) -> int:
        """How many turns hold or wait for `key`: zero means nothing is kept for the agent."""
        line = self._lines.get(key)
        return line.users if line else 0

    async def enter(self, key: str) -> Callable[[], None]:
        """Waits for `key`'s turn; the returned function ends it (calling it twice is harmless)."""
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
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
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
