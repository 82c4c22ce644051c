"""Open WebUI's background tasks, recognised and answered without touching the agent.

Besides the chat itself, Open WebUI asks the chat's model for a title, tags, follow-up suggestions, search
queries, autocompletions, an emoji, an image prompt or a choice of tools: each is one more chat completion
whose single user message is a prompt built around the conversation (`### Task:` ... `<chat_history>`).
Forwarded, each would be a new user turn in the agent's memory, quoting the conversation back to it.
`detect_task` recognises them; `local_answer` is the emptiest answer Open WebUI still parses.

Open WebUI 0.10+ can say so itself: a connection's custom header `X-OpenWebUI-Task: {{TASK}}` carries the
task's name (`title_generation`, ...), and is empty on chat turns. When that header is there it decides
alone. Without it the prompt decides, and only Open WebUI's own shapes count (one user message with a
quoted `<chat_history>`), so a user's message that happens to start with `### Task:`, or a chat turn with
Open WebUI's RAG template in front, still reaches the agent.
"""

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from proxy.chat import protocol

TaskKind = Literal[
    "title", "tags", "follow_ups", "queries", "autocomplete", "emoji", "image_prompt",
    "function_calling", "other",
]  # fmt: skip

TASK_HEADER = "x-openwebui-task"
HEADER_KINDS: dict[str, TaskKind] = {
    "title_generation": "title",
    "tags_generation": "tags",
    "follow_up_generation": "follow_ups",
    "query_generation": "queries",
    "autocomplete_generation": "autocomplete",
    "emoji_generation": "emoji",
    "image_prompt_generation": "image_prompt",
    "function_calling": "function_calling",
}
# Tasks whose answer the user reads as the reply (mixture of agents): the agent gives those.
USER_FACING_TASKS = frozenset({"moa_response_generation"})
# The JSON key a `### Task:` template asks for names the task.
ASKED_KEYS: dict[str, TaskKind] = {
    "title": "title",
    "tags": "tags",
    "follow_ups": "follow_ups",
    "queries": "queries",
    "text": "autocomplete",
    "prompt": "image_prompt",
}
TASK_PREFIX = "### Task:"
EMOJI_PREFIX = "Your task is to reflect the speaker's likely facial expression"
TOOLS_PREFIX = "Available Tools:"
NEUTRAL_EMOJI = "🙂"
FALLBACK_TITLE = "New chat"
TITLE_WORDS = 5
TITLE_CHARS = 60

_HISTORY = re.compile(r"<chat_history>(.*?)</chat_history>", re.S)
_TURN = re.compile(r"^(USER|ASSISTANT|SYSTEM|DEVELOPER|TOOL): ", re.M)
_QUOTED_CHAT = re.compile(r"<chat_history>|^(?:USER|ASSISTANT): ", re.M)
_ASKED = re.compile(r'"(\w+)"\s*:\s*([\["{])')
_EMPTY: dict[str, object] = {"[": [], '"': "", "{": {}}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_ESCAPES = {ord(char): f"\\u{ord(char):04x}" for char in "{}'`"}


@dataclass(frozen=True, slots=True)
class Task:
    """One Open WebUI background request; `source` says how it was recognised, for the logs."""

    kind: TaskKind
    source: Literal["header", "prompt"]


def detect_task(messages: Sequence[protocol.ChatMessage], headers: Mapping[str, str]) -> Task | None:
    """The task a request is, or None for a chat turn, which goes to the agent."""
    value = next((value for key, value in headers.items() if key.lower() == TASK_HEADER), None)
    if value is not None:
        name = value.strip().lower()
        if not name or name in USER_FACING_TASKS:
            return None
        return Task(HEADER_KINDS.get(name, "other"), "header")
    kind = _prompt_kind(messages)
    return Task(kind, "prompt") if kind else None


def local_answer(task: Task, messages: Sequence[protocol.ChatMessage]) -> str:
    """The assistant text to return instead of the agent's: what Open WebUI's parser expects, nothing more."""
    prompt = next((_text(m) for m in reversed(messages) if m.role == "user"), "")
    asked = _asked(prompt)
    last = _last_user_turn(prompt)
    match task.kind:
        case "title":
            title = " ".join(last.split()[:TITLE_WORDS])[:TITLE_CHARS] or FALLBACK_TITLE
            return _json({"title": title}) if asked or not prompt.strip() else title
        case "queries":  # [] would skip a web search the user asked for; this is Open WebUI's own fallback
            return _json({"queries": [last] if last else []})
        case "image_prompt":
            return _json({"prompt": last})
        case "emoji":
            return NEUTRAL_EMOJI
        case "function_calling":
            return _json({"tool_calls": []})
        case "tags" | "follow_ups":
            return _json({task.kind: []})
        case "autocomplete":
            return _json({"text": ""})
    return _json({asked[1]: _EMPTY[asked[2]]}) if asked else ""


def _prompt_kind(messages: Sequence[protocol.ChatMessage]) -> TaskKind | None:
    """Open WebUI sends a task as one user message, after a system message at most, never after an answer."""
    if any(m.role not in ("system", "developer", "user") for m in messages):
        return None
    users = [m for m in messages if m.role == "user"]
    if len(users) != 1:
        return None
    prompt = _text(users[0]).lstrip()
    if prompt.startswith(EMOJI_PREFIX):
        return "emoji"
    system = "\n".join(_text(m) for m in messages if m.role != "user")
    if prompt.startswith(("Query:", "History:")) and TOOLS_PREFIX in system:
        return "function_calling"
    if prompt.startswith(TASK_PREFIX) and _HISTORY.search(prompt):
        asked = _asked(prompt)
        return ASKED_KEYS.get(asked[1], "other") if asked else "other"
    return None


def _asked(prompt: str) -> re.Match[str] | None:
    """The first JSON key the prompt asks for (and how its value opens), before the conversation it quotes,
    which may hold any JSON."""
    return _ASKED.search(_QUOTED_CHAT.split(prompt, maxsplit=1)[0])


def _last_user_turn(prompt: str) -> str:
    """The last user message of the conversation the prompt quotes, as Open WebUI writes it (`USER: ...`)."""
    history = _HISTORY.search(prompt)
    parts = _TURN.split(history[1] if history else "")
    for role, text in reversed(list(zip(parts[1::2], parts[2::2], strict=True))):
        if role == "USER" and text.strip() not in ("", "None"):
            return text.strip()
    return ""


def _text(message: protocol.ChatMessage) -> str:
    content = message.content
    if isinstance(content, list):
        return "\n".join(part.text for part in content if part.type == "text" and part.text)
    return content or ""


def _json(value: dict[str, object]) -> str:
    """JSON whose only braces and quotes are its own: Open WebUI cuts the object out between a `{` and the
    last `}` (from the last `{` for queries and image prompts), and its browser code turns every ' and `
    into " before parsing; non-ASCII quotes are escaped by `json.dumps` already."""
    return _STRING.sub(lambda string: string[0].translate(_ESCAPES), json.dumps(value))
