"""Letta's agent endpoints: the listing behind the agent directory, and one agent's state, creation and
deletion for an end user's own agent (proxy/user_agents.py)."""

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import letta_client

from proxy.letta.agents import LIST_PAGE, Agent, AgentDirectory
from proxy.letta.client import READ_WHOLE, RETRY_BACKOFF, LettaClient
from proxy.letta.errors import UPSTREAM_ERRORS, map_failure
from proxy.letta.wire import AgentRecord, decode_agents, decode_state
from proxy.settings import Settings

LIST_RETRIES = 2


class AgentCalls(LettaClient):
    def __init__(self, settings: Settings, clock: Callable[[], float] | None = None) -> None:
        super().__init__(settings)
        self._directory = AgentDirectory(self._page, settings, self._in_background, clock)

    async def agents(self, *, fresh: bool = False) -> list[Agent]:
        return await self._directory.agents(fresh=fresh)

    async def _page(self, params: dict[str, object]) -> list[AgentRecord]:
        """One page, retried briefly if Letta fails; a Letta that asks us to wait is left alone and its
        Retry-After passed on, rather than waited out while a request waits on the listing."""
        attempt = 0
        while True:
            try:
                response = await self._client.get(
                    "/v1/agents/", cast_to=httpx.Response, options={"params": params, "headers": READ_WHOLE}
                )
                return decode_agents(await self._body(response, sent=False))
            except UPSTREAM_ERRORS as exc:
                if attempt >= LIST_RETRIES or not _passing(exc):
                    raise map_failure(exc, sent=False, secret=self._secret) from exc
            await asyncio.sleep(RETRY_BACKOFF * 2**attempt)
            attempt += 1

    async def agent_state(self, agent_id: str, include: Iterable[str]) -> dict[str, Any]:
        """The agent's state with the relations named (`agent.blocks`...), as plain data."""
        options = {"params": {"include": list(include)}, "headers": READ_WHOLE}
        path = f"/v1/agents/{agent_id}"
        response = await self._call(lambda: self._client.get(path, cast_to=httpx.Response, options=options))

        return decode_state(await self._body(response, sent=False))

    async def tagged(self, tag: str) -> list[AgentRecord]:
        """The agents carrying `tag`, oldest first: one page, as a tag names one agent, a few after a race."""
        return await self._page({"tags": [tag], "order": "asc", "limit": LIST_PAGE})

    async def create_agent(self, body: dict[str, Any]) -> None:
        """Never retried: a create that may have reached Letta is looked for by its tag instead."""
        await self._call(lambda: self._post("/v1/agents/", body))

    async def delete_agent(self, agent_id: str) -> None:
        """An agent already gone is no failure: another replica may have deleted it first."""
        try:
            await self._client.agents.delete(agent_id)
        except letta_client.NotFoundError:
            pass
        except UPSTREAM_ERRORS as exc:
            raise map_failure(exc, sent=False, secret=self._secret) from exc


def _passing(exc: Exception) -> bool:
    """A failure of a listing that is worth one more try: not a refusal, and not one that asks us to wait."""
    if isinstance(exc, letta_client.APIStatusError):
        status = exc.status_code
        return (status >= 500 or status in (408, 429)) and "retry-after" not in exc.response.headers
    return True
