"""The agent directory: Letta's agents, listed page by page within bounds, and cached briefly.

The pages come from `AgentCalls` (agent_calls.py), which owns the client; this module decides when to
list and when a listing has gone wrong (it outlives LETTA_TIMEOUT, repeats a page, or never ends). An end
user's own agent (tagged `lop-user:...`, see proxy/user_agents.py) is never in the directory: it is
reached only through its template, so no listing shows it and no model name or id reaches it.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from proxy.errors import ProxyError
from proxy.letta.wire import AgentRecord
from proxy.settings import Settings

log = logging.getLogger("proxy")

LIST_PAGE = 100  # agents per page; tags are the lightest relation to include, all of them the heaviest
MISS_RELIST_SECONDS = 1.0  # a model missing from the list lists again, at most this often however many miss
MAX_LIST_PAGES = 1000  # 100,000 agents: a listing longer than that is a Letta that does not paginate
USER_AGENT_TAG = "lop-user:"  # the tag of an end user's own agent, followed by its hash

PageReader = Callable[[dict[str, object]], Awaitable[list[AgentRecord]]]
Spawner = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    name: str
    created: int
    type: str | None = None  # Letta's agent type: only some take client tools


class AgentDirectory:
    def __init__(
        self,
        read_page: PageReader,
        settings: Settings,
        in_background: Spawner,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._read_page = read_page
        self._clock = clock or time.monotonic
        self._in_background = in_background
        self._allowed = set(settings.proxy_agents)
        self._cache_seconds = settings.proxy_agent_cache_seconds
        self._deadline = settings.letta_timeout
        self._agents: list[Agent] = []
        self._fetched_at = -float("inf")
        self._refreshing: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def forget(self) -> None:
        """The list is out of date (an agent in it is gone): list again next time."""
        self._fetched_at = -float("inf")

    async def agents(self, *, fresh: bool = False) -> list[Agent]:
        """The exposed agents, listed at most once per cache period however many requests ask.

        Stale for less than another period, the list is served while a background task lists again, so
        a busy proxy never makes a request wait on a listing; only one idle for longer lists first.
        `fresh` is for a model the list lacks, perhaps an agent made a moment ago: it lists again unless
        the list is under a second old, so a stream of unknown names costs Letta one listing a second.
        """
        age = self._clock() - self._fetched_at
        if fresh and age >= MISS_RELIST_SECONDS:
            return await self._refresh(MISS_RELIST_SECONDS)
        if age < self._cache_seconds:
            return self._agents
        if age < 2 * self._cache_seconds:
            if self._refreshing is None or self._refreshing.done():
                self._refreshing = self._in_background(self._refresh_quietly())
            return self._agents
        return await self._refresh()

    async def _refresh(self, max_age: float | None = None) -> list[Agent]:
        async with self._lock:
            oldest = self._cache_seconds if max_age is None else max_age
            if self._clock() - self._fetched_at >= oldest:  # else another caller just did
                self._agents = await self._list_agents()
                self._fetched_at = self._clock()
            return self._agents

    async def _refresh_quietly(self) -> None:
        try:
            await self._refresh()
        except ProxyError as error:
            log.warning("could not list the agents again: %s", error.code)

    async def _list_agents(self) -> list[Agent]:
        """Every page, all within one LETTA_TIMEOUT: a listing that does not end is Letta's fault."""
        try:
            async with asyncio.timeout(self._deadline):
                listed = await self._pages()
        except TimeoutError:
            raise ProxyError(
                504,
                "Listing the Letta server's agents took too long.",
                type="server_error",
                code="upstream_timeout",
            ) from None
        if not self._allowed:
            return listed
        return [agent for agent in listed if agent.name in self._allowed or agent.id in self._allowed]

    async def _pages(self) -> list[Agent]:
        """Every page, each decoded by msgspec into the few fields used, not into the SDK's pydantic models
        (bench/README.md). A cursor seen before, or more pages than any real Letta holds, is a 502."""
        # By id: agents made or deleted between two pages can shift one into both, and it is one agent.
        listed: dict[str, Agent] = {}
        params: dict[str, object] = {"include": ["agent.tags"], "limit": LIST_PAGE}
        cursors: set[str] = set()
        for _ in range(MAX_LIST_PAGES):
            page = await self._read_page(params)
            if not page:
                return list(listed.values())
            for a in page:
                if a.id not in listed and not any(tag.startswith(USER_AGENT_TAG) for tag in a.tags):
                    created = int(a.created_at.timestamp()) if a.created_at else 0
                    listed[a.id] = Agent(a.id, a.name, created, a.agent_type)
            if page[-1].id in cursors:
                raise _bad_listing("its pages repeat themselves")
            cursors.add(page[-1].id)
            params["after"] = page[-1].id
        raise _bad_listing(f"it has more than {MAX_LIST_PAGES} pages")


def _bad_listing(why: str) -> ProxyError:
    return ProxyError(
        502,
        f"The Letta server's agent list cannot be read: {why}.",
        type="server_error",
        code="upstream_error",
    )
