"""Cancelling Letta runs: a run a stream left unfinished, or the runs of a turn whose client left before
its run id was known. Best effort: a cancel that fails is logged, never raised to a client already gone."""

import logging

from letta_client import AsyncLetta

from proxy.letta.agents import Agent
from proxy.letta.client import CANCEL_TIMEOUT
from proxy.letta.errors import UPSTREAM_ERRORS

log = logging.getLogger("proxy")


async def cancel_run(client: AsyncLetta, agent: Agent, run_id: str, conversation: str | None) -> None:
    """Cancels one run, in the agent's default history or in `conversation`."""
    client = client.with_options(timeout=CANCEL_TIMEOUT)
    try:
        if conversation:
            await client.conversations.cancel(conversation)
        else:
            await client.agents.messages.cancel(agent.id, run_ids=[run_id])
        log.info("cancelled run %s of agent %s", run_id, agent.id)
    except UPSTREAM_ERRORS as exc:
        log.warning("could not cancel run %s: %s", run_id, exc.__class__.__name__)


async def cancel_active(client: AsyncLetta, agent: Agent, conversation: str | None) -> None:
    """Cancels the runs active in one history of the agent (its default one, or `conversation`).

    For a turn whose client left before its run id was known: called while the proxy holds that
    history's turn, when the only run active there is the leaving turn's. Letta's cancel without run
    ids would also stop the runs of the agent's other conversations, so the runs are picked here.
    """
    client = client.with_options(timeout=CANCEL_TIMEOUT)
    try:
        active = await client.runs.list(agent_id=agent.id, statuses=["created", "running"], limit=100)
        run_ids = [  # one page: in the history the proxy holds, one run at most is active
            run.id for run in active.items if run.agent_id == agent.id and run.conversation_id == conversation
        ]
        if run_ids:
            await client.agents.messages.cancel(agent.id, run_ids=run_ids)
        log.info("cancelled %d active run(s) of agent %s", len(run_ids), agent.id)
    except UPSTREAM_ERRORS as exc:
        log.warning("could not cancel the active runs of agent %s: %s", agent.id, exc.__class__.__name__)
