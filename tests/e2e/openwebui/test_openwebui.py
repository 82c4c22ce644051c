"""Open WebUI (pinned, tests/e2e/openwebui/openwebui.py) in a real browser, through the proxy, on the real
Letta: pick an agent, chat, start a second chat; then read what Letta recorded.

The tests run in file order on one browser tab: each goes on from where the one before left the page.
Every step leaves a screenshot, after a check that a string it should show is visible.
"""

import json
import re
import uuid
from pathlib import Path

import httpx
import pytest
from letta_client import Letta
from letta_client.types import AgentState
from playwright.sync_api import Page, expect

from tests.e2e.conftest import API_KEY
from tests.e2e.openwebui.openwebui import VERSION

RUN = uuid.uuid4().hex[:6]
FIRST, SECOND, THIRD = f"hello {RUN} one", f"and {RUN} two", f"another chat {RUN}"
OPENWEBUI_USER = "User"  # the name of the one user Open WebUI has without a login
MODEL_BUTTON = "#model-selector-model-button"
TASK_PROMPTS = json.loads(
    (Path(__file__).parents[2] / "fixtures" / "openwebui" / f"v{VERSION}.json").read_text()
)


def shoot(page: Page, shots: Path, name: str, visible: str) -> None:
    """A screenshot of this step, once `visible` shows on the page."""
    expect(page.get_by_text(visible).first).to_be_visible()
    path = shots / f"{len(list(shots.iterdir())) + 1:02d}-{name}.png"
    page.screenshot(path=path)


def send(page: Page, text: str) -> None:
    """Types a message as a person would and sends it with Enter; waits for the agent's streamed answer."""
    page.locator("#chat-input").click()
    page.keyboard.type(text)
    page.keyboard.press("Enter")
    expect(page.get_by_text(f"Echo: {text}", exact=True)).to_be_visible()


def conversations(letta: Letta, agent: AgentState) -> dict[str, list[tuple[str, str | None]]]:
    """Each Letta conversation of the agent, oldest first: its user messages' (text, sender name)."""
    found = sorted(letta.conversations.list(agent_id=agent.id), key=lambda c: c.created_at)
    return {
        conversation.id: [
            (str(message.content), message.name)
            for message in letta.conversations.messages.list(conversation.id, order="asc", limit=100)
            if message.message_type == "user_message"
        ]
        for conversation in found
    }


def streamed_turns(proxy_url: str, agent: AgentState) -> float:
    """How many streams the proxy has opened for the agent (its first-chunk histogram counts only streams)."""
    metrics = httpx.get(f"{proxy_url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    found = re.search(
        rf'^proxy_first_chunk_seconds_count\{{model="{re.escape(agent.name)}"\}} (\S+)$', metrics, re.M
    )
    return float(found[1]) if found else 0.0


@pytest.fixture(scope="module")
def agent(page: Page, agents: tuple[AgentState, AgentState]) -> AgentState:
    """The agent the test picks: the one Open WebUI has not preselected."""
    preselected = page.locator(MODEL_BUTTON).inner_text().strip()
    return next(agent for agent in agents if agent.name != preselected)


def test_a_picked_agent_answers_a_first_message_streamed_in_a_conversation_of_its_own(
    page: Page, agent: AgentState, letta: Letta, webui_proxy: str, shots: Path
) -> None:
    """The model menu lists the agents; the one picked streams its answer, in a new Letta conversation,
    under Open WebUI's user name."""
    page.locator(MODEL_BUTTON).click()
    page.get_by_role("option", name=f"Select {agent.name} model").click()
    expect(page.locator(MODEL_BUTTON)).to_have_text(agent.name)
    shoot(page, shots, "agent-picked", agent.name)
    send(page, FIRST)
    shoot(page, shots, "first-answer", f"Echo: {FIRST}")
    assert streamed_turns(webui_proxy, agent) == 1
    assert list(conversations(letta, agent).values()) == [[(FIRST, OPENWEBUI_USER)]]


def test_a_second_message_in_the_chat_sends_only_the_new_turn(
    page: Page, agent: AgentState, letta: Letta, shots: Path
) -> None:
    """Open WebUI sends the whole chat again; Letta gets only the new message, in the same conversation."""
    chat_url = page.url
    send(page, SECOND)
    shoot(page, shots, "second-answer", f"Echo: {SECOND}")
    assert page.url == chat_url
    assert list(conversations(letta, agent).values()) == [[(FIRST, OPENWEBUI_USER), (SECOND, OPENWEBUI_USER)]]


def test_a_new_chat_is_a_new_letta_conversation(
    page: Page, agent: AgentState, letta: Letta, shots: Path
) -> None:
    """A second chat with the same agent starts from an empty conversation; the first one is untouched."""
    page.get_by_label("New Chat", exact=True).filter(visible=True).first.click()
    expect(page.locator(MODEL_BUTTON)).to_have_text(agent.name)
    shoot(page, shots, "new-chat", agent.name)
    send(page, THIRD)
    shoot(page, shots, "new-chat-answer", f"Echo: {THIRD}")
    first, second = conversations(letta, agent).values()
    assert first == [(FIRST, OPENWEBUI_USER), (SECOND, OPENWEBUI_USER)]
    assert second == [(THIRD, OPENWEBUI_USER)]
