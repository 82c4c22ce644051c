"""Open WebUI (pinned, tests/e2e/openwebui/openwebui.py) in a real browser, through the proxy, on the real
Letta: pick an agent, chat, start a second chat; then read what Letta recorded.

The tests run in file order on one browser tab: each goes on from where the one before left the page.
Every step leaves a screenshot, after a check that a string it should show is visible.
"""

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from letta_client import Letta
from letta_client.types import AgentState
from playwright.sync_api import Page, expect

from tests.e2e.conftest import API_KEY
from tests.e2e.letta_history import user_texts
from tests.e2e.openwebui.openwebui import VERSION

RUN = uuid.uuid4().hex[:6]
FIRST, SECOND, THIRD = f"hello {RUN} one", f"and {RUN} two", f"another chat {RUN}"
TOOL = "get_current_timestamp"  # one of Open WebUI's built-in tools, which it offers with every turn
TOOL_TURN = f"/call {TOOL} {{}}"  # the fake LLM behind Letta calls the tool named so
OPENWEBUI_USER = "User"  # the name of the one user Open WebUI has without a login
MODEL_BUTTON = "#model-selector-model-button"
TASKS_TIMEOUT = 120.0
TASK_PROMPTS = json.loads(
    (Path(__file__).parents[2] / "fixtures" / "openwebui" / f"v{VERSION}.json").read_text()
)


def shoot(page: Page, shots: Path, name: str, visible: str) -> None:
    """A screenshot of this step, once `visible` shows whole on the page (no panel still sliding in)."""
    expect(page.get_by_text(visible).first).to_be_in_viewport(ratio=1.0)
    path = shots / f"{len(list(shots.iterdir())) + 1:02d}-{name}.png"
    page.screenshot(path=path)


def send(page: Page, text: str) -> None:
    """Types a message as a person would and sends it with Enter; waits for the agent's streamed answer."""
    page.locator("#chat-input").click()
    page.keyboard.type(text)
    page.keyboard.press("Enter")
    expect(page.get_by_text(f"Echo: {text}", exact=True)).to_be_visible()


def task_markers() -> dict[str, str]:
    """A line of each task prompt of the pinned Open WebUI, by task, and what any task prompt holds."""
    markers = {}
    for task, sample in TASK_PROMPTS["requests"].items():
        prompt = [m["content"] for m in sample["body"]["messages"] if m["role"] == "user"][-1]
        markers[task] = next(line for line in prompt.splitlines() if line and line != "### Task:")
    del markers["chat_with_rag_context"]  # a chat turn, which does go to the agent
    return {**markers, "an unknown task": "<chat_history>"}


def no_task_prompts(agent: AgentState, texts: list[str]) -> list[str]:
    """The texts, once checked for Open WebUI's task prompts: one there means the proxy's detection missed
    a prompt of this Open WebUI, and the failure names it."""
    for task, marker in task_markers().items():
        assert not [text for text in texts if marker in text], (
            f"Open WebUI {VERSION}'s {task} prompt reached agent {agent.name}'s Letta history: "
            "the proxy's task detection (proxy/tasks.py) no longer recognises it"
        )
    return texts


def conversations(letta: Letta, agent: AgentState) -> list[list[tuple[str, str | None]]]:
    """Each Letta conversation of the agent, oldest first: its user messages' (text, sender name)."""
    found = sorted(letta.conversations.list(agent_id=agent.id), key=lambda c: c.created_at)
    chats = [
        [
            (str(message.content), message.name)
            for message in letta.conversations.messages.list(conversation.id, order="asc", limit=100)
            if message.message_type == "user_message"
        ]
        for conversation in found
    ]
    no_task_prompts(agent, [text for chat in chats for text, _ in chat])
    return chats


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
    assert conversations(letta, agent) == [[(FIRST, OPENWEBUI_USER)]]


def test_a_second_message_in_the_chat_sends_only_the_new_turn(
    page: Page, agent: AgentState, letta: Letta, shots: Path
) -> None:
    """Open WebUI sends the whole chat again; Letta gets only the new message, in the same conversation."""
    chat_url = page.url
    send(page, SECOND)
    shoot(page, shots, "second-answer", f"Echo: {SECOND}")
    assert page.url == chat_url
    assert conversations(letta, agent) == [[(FIRST, OPENWEBUI_USER), (SECOND, OPENWEBUI_USER)]]


def test_a_new_chat_is_a_new_letta_conversation(
    page: Page, agent: AgentState, letta: Letta, shots: Path
) -> None:
    """A second chat with the same agent starts from an empty conversation; the first one is untouched."""
    page.get_by_label("New Chat", exact=True).filter(visible=True).first.click()
    expect(page.locator(MODEL_BUTTON)).to_have_text(agent.name)
    shoot(page, shots, "new-chat", agent.name)
    send(page, THIRD)
    shoot(page, shots, "new-chat-answer", f"Echo: {THIRD}")
    first, second = conversations(letta, agent)
    assert first == [(FIRST, OPENWEBUI_USER), (SECOND, OPENWEBUI_USER)]
    assert second == [(THIRD, OPENWEBUI_USER)]


def test_a_turn_using_an_open_webui_tool_shows_the_answer(
    page: Page, agent: AgentState, letta: Letta, shots: Path
) -> None:
    """Open WebUI offers its built-in tools; the agent calls one, Open WebUI runs it and sends the result,
    and the agent's answer quoting that result shows, with no error under it."""
    page.get_by_label("New Chat", exact=True).filter(visible=True).first.click()
    page.locator("#chat-input").click()
    page.keyboard.type(TOOL_TURN)
    page.keyboard.press("Enter")
    answer = page.get_by_text(
        re.compile(rf"^Echo: {re.escape(TOOL_TURN)} \| {TOOL} returned: .*current_timestamp")
    )
    expect(answer).to_be_visible()
    shoot(page, shots, "tool-answer", f"{TOOL} returned")
    expect(page.get_by_text(re.compile("error", re.I))).to_have_count(0)
    assert conversations(letta, agent)[-1] == [(TOOL_TURN, OPENWEBUI_USER)]


def settled_chats(openwebui: str, token: str) -> list[dict[str, Any]]:
    """Open WebUI's chats once their background tasks (title, tags, follow-ups) have all come back."""
    api = httpx.Client(base_url=openwebui, headers={"Authorization": f"Bearer {token}"}, timeout=30.0)
    deadline = time.monotonic() + TASKS_TIMEOUT
    while True:
        chats = [api.get(f"/api/v1/chats/{chat['id']}").json() for chat in api.get("/api/v1/chats/").json()]
        busy = [chat["id"] for chat in chats if api.get(f"/api/tasks/chat/{chat['id']}").json()["task_ids"]]
        if not busy or time.monotonic() > deadline:
            assert not busy, f"Open WebUI's background tasks still running after {TASKS_TIMEOUT} s"
            return chats
        time.sleep(1.0)


def test_no_background_task_reaches_letta(
    page: Page, openwebui: str, agents: tuple[AgentState, AgentState], letta: Letta, shots: Path
) -> None:
    """Open WebUI's titles, tags and follow-ups are answered by the proxy (the titles are the proxy's, the
    follow-ups its empty list); Letta holds exactly the three messages typed. A task prompt in a history
    means the proxy's detection missed one of this Open WebUI's prompts: the failure names the task."""
    chats = settled_chats(openwebui, page.evaluate("localStorage.token"))
    typed = [FIRST, SECOND, THIRD, TOOL_TURN]
    texts = [sorted(no_task_prompts(agent, user_texts(letta, agent.id))) for agent in agents]
    assert sorted(texts) == [[], sorted(typed)]  # all the agents' messages, conversations included
    assert sorted(chat["title"] for chat in chats) == sorted([FIRST, THIRD, TOOL_TURN])  # the proxy's titles
    for chat in chats:
        history = chat["chat"]["history"]
        assert history["messages"][history["currentId"]].get("followUps") == []
    page.get_by_label("Open Sidebar").filter(visible=True).first.click()
    shoot(page, shots, "chat-titles", FIRST)
