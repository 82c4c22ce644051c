"""What the real Letta recorded for an agent: its messages and its runs, read straight from Letta."""

from datetime import UTC, datetime

from letta_client import Letta
from letta_client.types.agents import Run


def messages(letta: Letta, agent_id: str) -> list[tuple[str, str, str | None]]:
    """(type, text, sender name) of the agent's user and assistant messages, oldest first."""
    out = []
    for message in letta.agents.messages.list(agent_id, order="asc", limit=500):
        if message.message_type in ("user_message", "assistant_message"):
            content = message.content
            text = content if isinstance(content, str) else "".join(getattr(p, "text", "") for p in content)
            out.append((message.message_type, text, message.name))
    return out


def user_texts(letta: Letta, agent_id: str) -> list[str]:
    """The texts of the agent's user messages, oldest first."""
    return [text for kind, text, _ in messages(letta, agent_id) if kind == "user_message"]


def runs(letta: Letta, agent_id: str) -> list[Run]:
    """The agent's runs, oldest first (filtered here too: the server may return other agents' runs)."""
    found = {run.id: run for run in letta.runs.list(agent_id=agent_id, limit=100) if run.agent_id == agent_id}
    return sorted(found.values(), key=lambda run: utc(run.created_at))


def utc(moment: datetime | None) -> datetime:
    """Letta mixes naive (UTC) and aware timestamps; this makes them comparable."""
    moment = moment or datetime.min
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
