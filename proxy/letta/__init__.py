"""The only user of letta-client: every call to Letta goes through the `Letta` facade built here.

One module per responsibility: `client` (the pooled client, its lifecycle and health), `agent_calls`
and `agents` (Letta's agents and the cached directory of them), `turn` (sending or streaming one turn),
`cancel` (stopping runs), `history` (past messages, runs, conversations), `errors` (upstream failures as
`ProxyError`s) and `wire` (msgspec decoding of Letta's bytes).
"""

from proxy.letta.agents import Agent
from proxy.letta.cancel import cancel_active
from proxy.letta.history import HistoryCalls
from proxy.letta.turn import TurnCalls

__all__ = ["Agent", "Letta"]


class Letta(TurnCalls, HistoryCalls):
    """One object for callers: agents, turns, histories and cancels over one shared client."""

    async def cancel_active(self, agent: Agent, conversation: str | None) -> None:
        await cancel_active(self._client, agent, conversation)
