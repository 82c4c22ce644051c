"""responses/translate.py: which input reaches the agent, and in what form."""

from typing import Any

import msgspec
import pytest

from proxy.chat.protocol import FunctionDefinition
from proxy.chat.translate import SYSTEM_BLOCK, Limits
from proxy.errors import ProxyError
from proxy.responses.protocol import ResponseRequest
from proxy.responses.translate import functions, turn_input
from proxy.tools import ToolResult

PNG = "data:image/png;base64,iVBORw0KGgo="


def request(**fields: Any) -> ResponseRequest:
    return msgspec.convert(fields, ResponseRequest)


DEFAULT = Limits()


def translate(limits: Limits = DEFAULT, continuing: bool = False, **fields: Any) -> Any:
    return turn_input(request(**fields), limits, continuing=continuing)


def user(content: Any) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": content}


def test_a_string_input_is_one_user_message() -> None:
    assert translate(input="hello") == ([], {"role": "user", "content": "hello"})


def test_only_the_items_after_the_last_assistant_or_function_call_are_new() -> None:
    """The history the client resends is already in Letta: only the new tail goes."""
    history = [
        user("old question"),
        {"role": "assistant", "content": [{"type": "output_text", "text": "old answer"}]},
        user("new question"),
    ]
    assert translate(input=history) == ([], {"role": "user", "content": "new question"})


def test_several_user_items_become_one_message_in_order() -> None:
    """Codex's <environment_context> item and its prompt reach the agent as one turn, a blank line apart."""
    items = [
        user([{"type": "input_text", "text": "<environment_context>cwd</environment_context>"}]),
        {"role": "user", "content": "fix the bug"},  # an item without `type` is a message
    ]
    _, message = translate(input=items, user="ada lovelace")
    assert message == {
        "role": "user",
        "content": "<environment_context>cwd</environment_context>\n\nfix the bug",
        "name": "ada_lovelace",
    }


def test_function_call_outputs_answer_the_calls_and_may_come_with_text() -> None:
    items = [
        user("/call lookup {}"),
        {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
        {
            "type": "function_call_output",
            "call_id": "call_2",
            "output": [{"type": "input_text", "text": "4"}],
        },
        user("and then?"),
    ]
    outputs, message = translate(input=items)
    assert outputs == [ToolResult("call_1", "42"), ToolResult("call_2", "4")]
    assert message == {"role": "user", "content": "and then?"}
    assert translate(input=items[:3]) == ([ToolResult("call_1", "42")], None)


def test_reasoning_items_are_skipped() -> None:
    items = [{"type": "reasoning", "id": "rs_1", "summary": []}, user("hi")]
    assert translate(input=items) == ([], {"role": "user", "content": "hi"})


def test_system_text_is_dropped_by_default() -> None:
    items = [{"role": "developer", "content": "be terse"}, user("hi")]
    assert translate(input=items, instructions="You are Codex.") == ([], {"role": "user", "content": "hi"})


def test_forwarded_system_text_is_a_marked_block_before_the_user_text() -> None:
    """instructions first, then system/developer items in order, all in one marked block."""
    items = [{"role": "developer", "content": [{"type": "input_text", "text": "be terse"}]}, user("hi")]
    _, message = translate(Limits(system_messages="forward"), input=items, instructions="You are Codex.")
    block = SYSTEM_BLOCK.format(text="You are Codex.\n\nbe terse")
    assert message == {"role": "user", "content": f"{block}\n\nhi"}


def test_instructions_are_forwarded_once_per_conversation() -> None:
    """A request continuing a previous response, or resending history, has sent its instructions before."""
    forward = Limits(system_messages="forward")
    assert translate(forward, continuing=True, input="hi", instructions="x")[1]["content"] == "hi"
    history = [user("a"), {"role": "assistant", "content": "b"}, user("c")]
    assert translate(forward, input=history, instructions="x")[1]["content"] == "c"


def test_images_are_data_urls_or_urls_on_allowed_hosts() -> None:
    """Letta fetches URL images itself, so only hosts the deployment allows get through."""
    url = "https://images.example.com/cat.png"
    parts = [{"type": "input_text", "text": "what is this"}, {"type": "input_image", "image_url": PNG}]
    _, message = translate(input=[user(parts)])
    assert message["content"] == [
        {"type": "text", "text": "what is this"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
    ]
    remote = [user([{"type": "input_image", "image_url": url}])]
    with pytest.raises(ProxyError) as refused:
        translate(input=remote)
    assert (refused.value.status, refused.value.param) == (400, "input[0].content[0].image_url")
    allowed = Limits(image_url_hosts=frozenset({"images.example.com"}))
    assert translate(allowed, input=remote)[1]["content"] == [
        {"type": "image", "source": {"type": "url", "url": url}}
    ]
    for sneaky in ("https://user@images.example.com/x.png", "https://images.example.com.evil.test/x.png"):
        with pytest.raises(ProxyError):
            translate(allowed, input=[user([{"type": "input_image", "image_url": sneaky}])])


@pytest.mark.parametrize(
    "items, param",
    [
        ([user("hi"), {"role": "assistant", "content": "done"}], "input"),
        ([{"type": "item_reference", "id": "msg_1"}], "input[0].type"),
        ([user([{"type": "input_file", "file_id": "f"}])], "input[0].content[0].type"),
        ([{"type": "function_call_output", "output": "x"}], "input[0].call_id"),
        ([{"type": "function_call_output", "call_id": "c"}], "input[0].output"),
    ],
)
def test_what_cannot_reach_the_agent_is_a_400_naming_it(items: list[Any], param: str) -> None:
    with pytest.raises(ProxyError) as refused:
        translate(input=items)
    assert (refused.value.status, refused.value.param) == (400, param)


def test_forwarded_system_text_must_be_text_and_dropped_is_not_read() -> None:
    items = [{"role": "system", "content": [{"type": "input_image", "image_url": PNG}]}, user("x")]
    assert translate(input=items)[1] == {"role": "user", "content": "x"}
    with pytest.raises(ProxyError) as refused:
        translate(Limits(system_messages="forward"), input=items)
    assert refused.value.param == "input[0].content[0].type"


def test_limits_apply() -> None:
    with pytest.raises(ProxyError) as refused:
        translate(Limits(text_chars=5), input="far too long")
    assert refused.value.code == "message_too_long"
    with pytest.raises(ProxyError) as refused:
        translate(Limits(messages=1), input=[user("a"), user("b")])
    assert refused.value.code == "too_many_messages"


def test_function_tools_are_offered_and_other_types_are_not() -> None:
    """Responses' flat function tools map to the neutral definition chat's tools map to too."""
    tools = [
        {"type": "function", "name": "lookup", "description": "Look up", "parameters": {"type": "object"}},
        {"type": "web_search"},
    ]
    assert functions(request(input="x", tools=tools)) == [
        FunctionDefinition("lookup", "Look up", {"type": "object"})
    ]
