"""End to end on the real Letta (0.16.8 has conversations too): a chat key pins one conversation."""

import uuid
from collections.abc import Callable

import openai
from letta_client import Letta
from letta_client.types import AgentState


def _texts(letta: Letta, conversation_id: str) -> str:
    messages = letta.conversations.messages.list(conversation_id, limit=100)
    return " ".join(str(getattr(message, "content", "")) for message in messages)


def test_two_chat_keys_keep_two_separate_conversations_with_one_agent(
    client: openai.OpenAI, letta: Letta, make_agent: Callable[[], AgentState]
) -> None:
    """Turns sent with different X-Letta-Chat-Key headers land in different Letta conversations."""
    agent = make_agent()
    alpha, beta = f"alpha-{uuid.uuid4().hex[:8]}", f"beta-{uuid.uuid4().hex[:8]}"
    for key, text in (("chat-1", alpha), ("chat-2", beta), ("chat-1", alpha + "-again")):
        answer = client.chat.completions.create(
            model=agent.name,
            messages=[{"role": "user", "content": text}],
            extra_headers={"X-Letta-Chat-Key": key},
        )
        assert answer.choices[0].message.content == f"Echo: {text}"
    conversations = [c.id for c in letta.conversations.list(agent_id=agent.id)]
    assert len(conversations) == 2
    histories = [_texts(letta, conversation) for conversation in conversations]
    [first] = [h for h in histories if alpha in h]
    [second] = [h for h in histories if beta in h]
    assert beta not in first and alpha not in second and f"{alpha}-again" in first
