"""End to end on the real Letta: concurrent turns for one agent are queued, and the speaker is named."""

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import openai
from letta_client import Letta
from letta_client.types import AgentState

from tests.e2e.letta_history import messages, runs, utc


def test_ten_concurrent_turns_for_one_agent_all_land_once_each_followed_by_its_answer(
    client: openai.OpenAI, letta: Letta, make_agent: Callable[[], AgentState]
) -> None:
    """Fired at once, ten turns are taken one at a time: every message once, each answered before the next."""
    agent = make_agent()
    texts = [f"turn {n} {uuid.uuid4().hex[:6]}" for n in range(10)]

    def send(text: str) -> str | None:
        answer = client.chat.completions.create(
            model=agent.name, messages=[{"role": "user", "content": text}]
        )
        return answer.choices[0].message.content

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(send, texts))
    assert answers == [f"Echo: {text}" for text in texts]
    history = [(kind, text) for kind, text, _ in messages(letta, agent.id)]
    users = [text for kind, text in history if kind == "user_message"]
    assert sorted(users) == sorted(texts) and len(users) == len(set(users))
    for kind, text in history:
        if kind == "user_message":
            assert history[history.index((kind, text)) + 1] == ("assistant_message", f"Echo: {text}")
    turns = runs(letta, agent.id)
    assert len(turns) == 10
    for earlier, later in zip(turns, turns[1:], strict=False):
        assert utc(earlier.completed_at) <= utc(later.created_at), (
            "two turns of one agent ran at the same time"
        )


def test_the_request_user_is_the_sender_name_in_the_agent_s_history(
    client: openai.OpenAI, letta: Letta, make_agent: Callable[[], AgentState]
) -> None:
    """Letta's message list shows who spoke, from the request's `user`."""
    agent = make_agent()
    client.chat.completions.create(
        model=agent.name, user="ada.lovelace", messages=[{"role": "user", "content": "who am I?"}]
    )
    names = [name for kind, text, name in messages(letta, agent.id) if text == "who am I?"]
    assert names == ["ada_lovelace"]
