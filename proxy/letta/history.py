"""What an agent's histories hold: its recent messages, a past run, and Letta's conversations."""

import asyncio
import logging

import letta_client

from proxy.errors import ProxyError
from proxy.letta.agents import Agent
from proxy.letta.client import LettaClient
from proxy.letta.errors import UPSTREAM_ERRORS, map_failure
from proxy.letta.wire import LettaMessage, RunRecord, decode_messages, decode_run, decode_usage
from proxy.settings import Settings

log = logging.getLogger("proxy")

RUN_MESSAGES = 1000  # messages of one past turn read back, at most


class HistoryCalls(LettaClient):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._has_conversations: bool | None = None

    async def last_message(self, agent: Agent, conversation: str | None) -> LettaMessage | None:
        """The newest message of the agent's default history, or of a conversation: an approval request
        there means the agent waits on tool calls."""
        return next(iter(await self.recent_messages(agent, conversation, 1)), None)

    async def recent_messages(self, agent: Agent, conversation: str | None, limit: int) -> list[LettaMessage]:
        """The newest messages of the agent's default history, or of a conversation, newest first.

        Letta 0.16.8 lists the newest `limit` messages, but the default history oldest first and a
        conversation newest first, whatever `order` says; this puts both newest first.
        """
        params: dict[str, object] = {"limit": limit, "order": "desc"}
        if conversation is None:
            params["agent_id"] = agent.id
        try:
            body = await self._get(f"/v1/conversations/{conversation or 'default'}/messages", params)
        except letta_client.NotFoundError as exc:
            raise ProxyError(
                404, "The agent or conversation of this turn no longer exists in Letta.", code="not_found"
            ) from exc
        messages = decode_messages(body)
        return messages if conversation else messages[::-1]

    async def run(self, run_id: str) -> tuple[RunRecord, list[LettaMessage], LettaMessage] | None:
        """A past turn as Letta keeps it: the run, its messages (oldest first) and its usage; None if gone."""
        try:
            run, messages, usage = await asyncio.gather(
                self._get(f"/v1/runs/{run_id}", {}),
                self._get(f"/v1/runs/{run_id}/messages", {"limit": RUN_MESSAGES, "order": "asc"}),
                self._get(f"/v1/runs/{run_id}/usage", {}),
            )
        except letta_client.NotFoundError:
            return None
        return decode_run(run), decode_messages(messages), decode_usage(usage)

    async def has_conversations(self) -> bool:
        """Whether this Letta has conversations (Letta Cloud, newer servers; 0.16.8 has none).

        Asked once; a Letta that cannot be reached leaves the question open for the next time.
        """
        if self._has_conversations is None:
            try:
                await self._client.conversations.list(limit=1)
                self._has_conversations = True
            except letta_client.APIStatusError:
                self._has_conversations = False
            except UPSTREAM_ERRORS:
                return False
            log.info("Letta conversations: %s", "available" if self._has_conversations else "not offered")
        return self._has_conversations

    async def conversation_agent(self, conversation: str) -> str | None:
        """The agent a conversation belongs to; None when Letta has no such conversation."""
        try:
            found = await self._client.conversations.retrieve(conversation)
        except letta_client.NotFoundError:
            return None
        except UPSTREAM_ERRORS as exc:
            raise map_failure(exc, sent=False, secret=self._secret) from exc
        return found.agent_id

    async def open_conversation(self, agent: Agent) -> str:
        """A new conversation of the agent: a separate chat beside its default history."""
        created = await self._call(lambda: self._client.conversations.create(agent_id=agent.id))
        return created.id
