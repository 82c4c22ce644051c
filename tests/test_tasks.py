"""tasks.py: Open WebUI's background requests (real prompts, tests/fixtures/openwebui/) and local answers."""

import json
import re
import unicodedata
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.datastructures import Headers

from proxy.chat import protocol
from proxy.tasks import NEUTRAL_EMOJI, Task, TaskKind, detect_task, local_answer

FIXTURES = Path(__file__).parent / "fixtures" / "openwebui"
VERSIONS = {
    path.stem.removeprefix("v"): json.loads(path.read_text()) for path in sorted(FIXTURES.glob("*.json"))
}
KINDS: dict[str, TaskKind] = {
    "title_generation": "title",
    "tags_generation": "tags",
    "follow_up_generation": "follow_ups",
    "query_generation": "queries",
    "image_prompt_generation": "image_prompt",
    "autocomplete_generation": "autocomplete",
    "emoji_generation": "emoji",
    "function_calling": "function_calling",
}
TASK_SAMPLES = [
    pytest.param(version, name, id=f"{version}-{name}")
    for version, fixture in VERSIONS.items()
    for name in fixture["requests"]
    if name in KINDS
]
LAST_USER_MESSAGE = "What's the best way to keep {secrets} out of my Git history?"


def sample(version: str, name: str) -> tuple[list[protocol.ChatMessage], dict[str, str]]:
    request = VERSIONS[version]["requests"][name]
    return msgspec.convert(request["body"]["messages"], list[protocol.ChatMessage]), request["headers"]


def answer_to(version: str, name: str) -> str:
    """The local answer to a real task request, recognised by its prompt alone."""
    chat, _ = sample(version, name)
    task = detect_task(chat, {})
    assert task is not None
    return local_answer(task, chat)


def messages(*pairs: tuple[str, Any]) -> list[protocol.ChatMessage]:
    return msgspec.convert(
        [{"role": role, "content": content} for role, content in pairs], list[protocol.ChatMessage]
    )


# --- Open WebUI's own parsing of the answers (0.12.4; 0.5.20 and 0.6.5 use the first two) ----------------


def backend_json(text: str) -> Any:
    """utils/middleware.py titles (3663-6), tags (3715-8), tools (1089-92); utils/task.py parse_follow_ups."""
    return json.loads(text[text.find("{") : text.rfind("}") + 1])


def backend_json_from_last_brace(text: str) -> Any:
    """utils/middleware.py web-search queries (1278-86), image prompt (1631-9), retrieval (1733-44)."""
    return json.loads(text[text.rfind("{") : text.rfind("}") + 1])


def browser_json(text: str) -> Any:
    """src/lib/apis/index.ts generateTitle and generateTags: quotes become " before the block is parsed."""
    sanitized = re.sub("['‘’`]", '"', text)
    return json.loads(sanitized[sanitized.index("{") : sanitized.rindex("}") + 1])


def browser_emoji(text: str) -> str | None:
    """src/lib/apis/index.ts generateEmoji: the first pictograph left once quotes are removed."""
    pictographs = [
        c for c in re.sub("[\"']", "", text) if unicodedata.category(c) == "So" and ord(c) > 0x2000
    ]
    return pictographs[0] if pictographs else None


# --- detection --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "name"), TASK_SAMPLES)
def test_every_open_webui_task_prompt_is_recognised_by_its_shape(version: str, name: str) -> None:
    """Each real task request, without the header, is recognised and classified by its template's wording."""
    chat, _ = sample(version, name)
    assert detect_task(chat, {}) == Task(KINDS[name], "prompt")


@pytest.mark.parametrize("name", [name for name in VERSIONS["0.12.4"]["requests"] if name in KINDS])
def test_the_task_header_names_the_task(name: str) -> None:
    """The `X-OpenWebUI-Task: {{TASK}}` header, as Open WebUI 0.12.4 fills it, decides the kind."""
    chat, headers = sample("0.12.4", name)
    assert detect_task(chat, headers) == Task(KINDS[name], "header")


@pytest.mark.parametrize("version", VERSIONS)
def test_a_chat_turn_with_open_webuis_rag_template_is_not_a_task(version: str) -> None:
    """Open WebUI puts its `### Task:` RAG template in front of real questions; those go to the agent."""
    chat, headers = sample(version, "chat_with_rag_context")
    assert detect_task(chat, {}) is None
    assert detect_task(chat, headers) is None


def test_an_empty_task_header_marks_a_chat_turn_whatever_the_prompt() -> None:
    """With the header configured, its empty value on chat turns wins over a task-like prompt."""
    chat, _ = sample("0.12.4", "title_generation")
    assert detect_task(chat, {"X-OpenWebUI-Task": ""}) is None


def test_the_header_is_found_in_any_case_and_in_litestar_headers() -> None:
    """Header names are case-insensitive; Litestar hands the route lower-cased ones."""
    chat = messages(("user", "hi"))
    assert detect_task(chat, Headers({"X-OpenWebUI-Task": "tags_generation"})) == Task("tags", "header")
    assert detect_task(chat, {"X-OPENWEBUI-TASK": " Query_Generation "}) == Task("queries", "header")


def test_unknown_header_tasks_are_other_and_mixture_of_agents_goes_to_the_agent() -> None:
    """A newer task name is still a task; a mixture-of-agents answer is the reply the user reads."""
    chat = messages(("user", "hi"))
    assert detect_task(chat, {"x-openwebui-task": "context_compaction"}) == Task("other", "header")
    assert detect_task(chat, {"x-openwebui-task": "moa_response_generation"}) is None


def test_a_prompt_given_as_text_parts_with_leading_whitespace_is_recognised() -> None:
    """Content as a list of text parts (as filters or pipelines may send it) is read as its joined text."""
    chat, _ = sample("0.12.4", "title_generation")
    text = chat[0].content
    assert isinstance(text, str)
    head, tail = text.split("### Chat History:")
    parts = [{"type": "text", "text": "\n  " + head}, {"type": "text", "text": "### Chat History:" + tail}]
    as_parts = messages(("system", "You are helpful."), ("user", parts))
    assert detect_task(as_parts, {}) == Task("title", "prompt")
    assert backend_json(local_answer(Task("title", "prompt"), as_parts)) == {
        "title": "What's the best way to"
    }


@pytest.mark.parametrize(
    "chat",
    [
        messages(("user", "In Open WebUI prompts, what does ### Task: mean? <chat_history> too?")),
        messages(
            ("user", '### Task:\nWrite a haiku about autumn.\n### Output:\nJSON format: { "title": "..." }')
        ),
        messages(
            ("assistant", "Hello! What shall we write today?"),
            ("user", "### Task:\nSummarize this:\n<chat_history>\nUSER: hi\n</chat_history>"),
        ),
        messages(("user", "Query: what is the weather in Paris?")),
        messages(
            ("system", "be brief"), ("user", "first"), ("user", "Your task is to reflect the speaker's ...")
        ),
    ],
    ids=[
        "mentions-task",
        "user-typed-task-prompt",
        "after-an-answer",
        "query-without-tools",
        "two-user-turns",
    ],
)
def test_ordinary_chat_messages_are_not_tasks(chat: list[protocol.ChatMessage]) -> None:
    """Only Open WebUI's shapes count: a `### Task:` mid-text, typed by a user, or after an answer is chat."""
    assert detect_task(chat, {}) is None


# --- local answers, parsed as Open WebUI parses them -----------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_the_title_is_the_first_words_of_the_last_user_message(version: str) -> None:
    """The title is JSON, as the template asks, and survives both the server's and the browser's parsing."""
    answer = answer_to(version, "title_generation")
    assert backend_json(answer) == browser_json(answer) == {"title": "What's the best way to"}


def test_a_title_keeps_its_quotes_through_the_browsers_quote_replacement() -> None:
    """Apostrophes, backticks and curly quotes are escaped, so the browser's quote rewrite cannot break it."""
    prompt = (
        '### Task:\nTitle\n### Output:\n{ "title": "..." }\n'
        "<chat_history>\nUSER: Don’t `rm` it's ‘mine’\n</chat_history>"
    )
    answer = local_answer(Task("title", "prompt"), messages(("user", prompt)))
    assert "'" not in answer and "`" not in answer and "’" not in answer
    assert browser_json(answer) == backend_json(answer) == {"title": "Don’t `rm` it's ‘mine’"}


def test_a_title_is_plain_text_when_the_template_does_not_ask_for_json() -> None:
    """A custom plain-text title template gets plain words, at most five."""
    prompt = (
        "### Task:\nWrite a short title.\n<chat_history>\nUSER: Plan a trip to Rome next spring, please\n"
        "</chat_history>"
    )
    chat = messages(("user", prompt))
    assert detect_task(chat, {}) == Task("other", "prompt")
    assert local_answer(Task("title", "header"), chat) == "Plan a trip to Rome"


def test_a_title_without_a_quoted_user_message_is_new_chat() -> None:
    """Without a user turn in the quoted history (or any prompt), the title falls back to a neutral one."""
    assert backend_json(local_answer(Task("title", "header"), [])) == {"title": "New chat"}
    prompt = '### Task:\n{ "title": "..." }\n<chat_history>\nUSER: None\nASSISTANT: Hi\n</chat_history>'
    assert backend_json(local_answer(Task("title", "prompt"), messages(("user", prompt)))) == {
        "title": "New chat"
    }


EMPTY_ANSWERS = {
    "tags_generation": {"tags": []},
    "follow_up_generation": {"follow_ups": []},
    "autocomplete_generation": {"text": ""},
}


@pytest.mark.parametrize(
    ("version", "name"), [param for param in TASK_SAMPLES if param.values[1] in EMPTY_ANSWERS]
)
def test_tags_follow_ups_and_autocompletion_are_empty(version: str, name: str) -> None:
    """Tags, follow-ups and autocompletions are valid and empty for the server's and the browser's parsers."""
    answer = answer_to(version, name)
    assert backend_json(answer) == browser_json(answer) == EMPTY_ANSWERS[name]


@pytest.mark.parametrize("version", VERSIONS)
def test_queries_are_the_users_own_message_even_with_braces_in_it(version: str) -> None:
    """Open WebUI's own fallback query; braces in it fool neither its first-`{` nor its last-`{` cut."""
    answer = answer_to(version, "query_generation")
    assert backend_json_from_last_brace(answer) == backend_json(answer) == {"queries": [LAST_USER_MESSAGE]}


@pytest.mark.parametrize("version", VERSIONS)
def test_the_image_prompt_is_the_users_request(version: str) -> None:
    """An empty image prompt would fail the image generation the user asked for."""
    answer = answer_to(version, "image_prompt_generation")
    assert backend_json_from_last_brace(answer) == {
        "prompt": "Draw a lighthouse on a cliff at dusk, in watercolor"
    }


@pytest.mark.parametrize("version", VERSIONS)
def test_the_emoji_is_one_neutral_pictograph(version: str) -> None:
    """The browser keeps the first pictograph of the answer: ours is the whole answer."""
    answer = answer_to(version, "emoji_generation")
    assert answer == NEUTRAL_EMOJI and browser_emoji(answer) == NEUTRAL_EMOJI


@pytest.mark.parametrize("version", VERSIONS)
def test_function_calling_chooses_no_tool(version: str) -> None:
    """`{"tool_calls": []}` is the template's own "no tool matches" answer; Open WebUI then runs none."""
    answer = answer_to(version, "function_calling")
    assert not backend_json(answer).get("tool_calls")
    assert backend_json(answer) == {"tool_calls": []}


def test_other_tasks_get_an_empty_answer_in_the_shape_asked() -> None:
    """Memory review asks for `{"operations":[...]}`; compaction asks for prose (Open WebUI writes it)."""
    review = (
        'Review the turn.\n- Return only JSON in this shape:\n  {"operations":[{"action":"add"}]}\n'
        'Conversation:\nUSER: {"a": "b"}'
    )
    assert backend_json(local_answer(Task("other", "header"), messages(("user", review)))) == {
        "operations": []
    }
    compaction = (
        '### Task:\nSummarize the conversation.\n### Messages Being Compacted:\nUSER: send {"a": [1]}'
    )
    assert local_answer(Task("other", "header"), messages(("user", compaction))) == ""
