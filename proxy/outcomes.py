"""Idempotency-Key outcomes in this process's memory (one worker, no Redis): see `proxy.idempotency`.

Bounded in count (the oldest go first) and in time (the window); expiry is lazy, as in
`proxy.sessions.MemoryStore`. A failed outcome lingers `FAILED_LINGER` seconds for the repeats already
replaying it, and a new claim replaces it at once.
"""

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.idempotency import Claim, State

FAILED_LINGER = 60.0


@dataclass
class _Outcome:
    fingerprint: str
    owner: str
    expires: float
    parts: list[str] = field(default_factory=list)
    state: State = "running"
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def touch(self) -> None:
        """Wakes the repeats waiting for more."""
        self.changed.set()
        self.changed = asyncio.Event()


class MemoryOutcomes:
    def __init__(
        self, window_seconds: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window = window_seconds
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, _Outcome] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _live(self, key: str) -> _Outcome | None:
        now = self._clock()
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.expires > now or oldest.state == "running":
                break
            self._entries.popitem(last=False)
        entry = self._entries.get(key)
        if entry is not None and entry.state != "running" and entry.expires <= now:
            del self._entries[key]
            return None
        return entry

    async def claim(self, key: str, fingerprint: str, owner: str) -> Claim:
        entry = self._live(key)
        if entry is not None and entry.state != "failed":
            return "theirs" if entry.fingerprint == fingerprint else "conflict"
        self._entries[key] = _Outcome(fingerprint, owner, self._clock() + self._window)
        self._entries.move_to_end(key)
        if len(self._entries) > self._max:  # the oldest ended outcome goes; running ones are never lost
            ended = next((k for k, e in self._entries.items() if e.state != "running"), None)
            if ended is not None:
                del self._entries[ended]
        return "mine"

    async def append(self, key: str, owner: str, part: str) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.owner == owner:
            entry.parts.append(part)
            entry.touch()

    async def finish(self, key: str, owner: str, kept: bool) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.owner == owner:
            entry.state = "done" if kept else "failed"
            entry.expires = self._clock() + (self._window if kept else FAILED_LINGER)
            entry.touch()

    async def read(self, key: str, start: int) -> tuple[list[str], State] | None:
        entry = self._entries.get(key)
        return None if entry is None else (entry.parts[start:], entry.state)

    async def wait(self, key: str, seen: int) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.state == "running" and len(entry.parts) == seen:
            await entry.changed.wait()

    async def heartbeat(self, key: str, owner: str) -> None:
        """Nothing to renew: an owner in this process ends its entry itself, however it ends."""
