"""tools.py: a client's tools as Letta client tools, and its tool messages as the Letta message that
answers the calls the agent waits on (pending calls taken from real captures)."""

from typing import Any

import msgspec
import pytest

from proxy.chat import protocol
from proxy.errors import ProxyError
from proxy.tools import (
    MOVED_ON,
    NO_APPROVER,
    PendingCall,
    ToolResult,
    answer,
    chat_functions,
    chat_tool_results,
    client_tools,
    deny,
    pending_calls,
)
from tests.letta_captures import events, turn

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CLIENT_CALL = PendingCall("call_1", "get_weather")
OWN_CALL = PendingCall("call_2", "conversation_search")


def request(**body: object) -> protocol.ChatCompletionRequest:
    return msgspec.convert(body, protocol.ChatCompletionRequest)


def refused(call: Any) -> ProxyError:
    with pytest.raises(ProxyError) as caught:
        call()
    assert caught.value.status == 400
    return caught.value


# --- the client's tools ------------------------------------------------------------------------------


def test_function_tools_become_letta_client_tools() -> None:
    """Name, description and JSON schema reach Letta as they were sent."""
    body = request(messages=[], tools=[WEATHER, {"type": "function", "function": {"name": "bare"}}])
    assert client_tools(chat_functions(body.tools), None) == [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
        {"name": "bare"},
    ]


@pytest.mark.parametrize(
    "choice", ["auto", "required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_tool_choices_other_than_none_offer_every_tool(choice: object) -> None:
    """Letta cannot force a call: any other choice is accepted, and the agent decides."""
    functions = chat_functions(request(messages=[], tools=[WEATHER]).tools)
    assert [tool["name"] for tool in client_tools(functions, choice)] == ["get_weather"]


def test_tool_choice_none_offers_nothing() -> None:
    """ "none" means the model must not call a tool: the agent is offered none."""
    assert client_tools(chat_functions(request(messages=[], tools=[WEATHER]).tools), "none") == []


def test_an_unknown_tool_choice_is_a_400() -> None:
    assert refused(lambda: client_tools([], "sometimes")).param == "tool_choice"


def test_a_tool_that_is_not_a_function_is_a_400() -> None:
    """Letta has only function tools: anything else would be lost silently."""
    body = request(messages=[], tools=[WEATHER, {"type": "web_search"}])
    assert refused(lambda: chat_functions(body.tools)).param == "tools[1].type"


# --- the client's tool messages ----------------------------------------------------------------------


def calls(*ids: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in ids
        ],
    }


def test_the_tool_messages_after_the_last_assistant_message_are_the_results() -> None:
    """Older tool messages were answered before; text parts of a result are joined."""
    body = request(
        messages=[
            {"role": "user", "content": "hi"},
            calls("old"),
            {"role": "tool", "tool_call_id": "old", "content": "done before"},
            calls("a", "b"),
            {
                "role": "tool",
                "tool_call_id": "b",
                "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}],
            },
            {"role": "tool", "tool_call_id": "a", "content": "1"},
            {"role": "user", "content": "and then?"},
        ]
    )
    assert chat_tool_results(body.messages, 100) == [ToolResult("b", "x\ny"), ToolResult("a", "1")]


def test_no_tool_messages_no_results() -> None:
    body = request(messages=[{"role": "user", "content": "hi"}, calls("a"), {"role": "user", "content": "?"}])
    assert chat_tool_results(body.messages, 100) == []


@pytest.mark.parametrize(
    "tail",
    [
        [{"role": "tool", "tool_call_id": "a", "content": "1"}],  # b unanswered
        [
            {"role": "tool", "tool_call_id": "a", "content": "1"},
            {"role": "tool", "tool_call_id": "c", "content": "2"},
        ],
        [{"role": "tool", "tool_call_id": "a", "content": "1"}] * 2
        + [{"role": "tool", "tool_call_id": "b", "content": "2"}],
    ],
    ids=["missing", "unknown", "twice"],
)
def test_results_must_answer_each_call_of_the_last_assistant_message_once(tail: list[dict[str, Any]]) -> None:
    """As OpenAI requires; otherwise a 400 naming messages, before anything reaches the agent."""
    body = request(messages=[{"role": "user", "content": "hi"}, calls("a", "b"), *tail])
    assert refused(lambda: chat_tool_results(body.messages, 100)).param == "messages"


def test_a_tool_message_without_its_call_id_is_a_400() -> None:
    body = request(messages=[calls("a"), {"role": "tool", "content": "1"}])
    assert refused(lambda: chat_tool_results(body.messages, 100)).param == "messages[1].tool_call_id"


def test_results_count_towards_the_text_limit() -> None:
    body = request(messages=[calls("a"), {"role": "tool", "tool_call_id": "a", "content": "123456"}])
    assert refused(lambda: chat_tool_results(body.messages, 5)).code == "message_too_long"


# --- what the agent waits on, and the answer -------------------------------------------------------


def test_pending_calls_are_read_from_a_whole_turn_and_a_stream() -> None:
    """Letta sends `tool_calls` as a list in a whole turn and as one object in a stream."""
    (whole,) = [m for m in turn("send_approval.json") if m.message_type == "approval_request_message"]
    streamed = next(m for m in events("stream_approval.sse") if m.message_type == "approval_request_message")
    assert pending_calls(whole) == [PendingCall("call_8ce62fe16c9b448f9a25", "get_weather")]
    assert pending_calls(streamed) == [PendingCall("call_9f690cdd9017469fabb8", "get_weather")]
    assert pending_calls(events("stream_tokens.sse")[1]) == [] and pending_calls(None) == []


def test_client_tool_results_are_one_tool_return_message() -> None:
    """What Letta's tool_return type takes: every result, as the client's text, in the agent's order."""
    pending = [CLIENT_CALL, PendingCall("call_3", "get_weather")]
    results = [ToolResult("call_3", "rain"), ToolResult("call_1", "sun")]
    assert answer(pending, results, {"get_weather"}, "deny") == {
        "type": "tool_return",
        "tool_returns": [
            {"type": "tool", "tool_call_id": "call_1", "status": "success", "tool_return": "sun"},
            {"type": "tool", "tool_call_id": "call_3", "status": "success", "tool_return": "rain"},
        ],
    }


def test_own_calls_waiting_beside_client_calls_are_denied_with_the_results() -> None:
    """In `deny` mode the agent's own calls are denied in the same approval message as the results."""
    message = answer([CLIENT_CALL, OWN_CALL], [ToolResult("call_1", "sun")], {"get_weather"}, "deny")
    assert message == {
        "type": "approval",
        "approvals": [
            {"type": "tool", "tool_call_id": "call_1", "status": "success", "tool_return": "sun"},
            {"type": "approval", "tool_call_id": "call_2", "approve": False, "reason": NO_APPROVER},
        ],
    }


@pytest.mark.parametrize(
    "output, verdict",
    [
        ("approve", {"approve": True}),
        (" Yes. ", {"approve": True}),
        ("no, not now", {"approve": False, "reason": "no, not now"}),
        ("", {"approve": False, "reason": "Denied by the user."}),
    ],
)
def test_in_client_mode_the_tool_message_approves_or_denies(output: str, verdict: dict[str, Any]) -> None:
    """A yes word approves the agent's own call; anything else denies it, the text being the reason."""
    message = answer([OWN_CALL], [ToolResult("call_2", output)], set(), "client")
    assert message == {
        "type": "approval",
        "approvals": [{"type": "approval", "tool_call_id": "call_2", **verdict}],
    }


@pytest.mark.parametrize(
    "pending, results",
    [
        ([], [ToolResult("call_1", "sun")]),  # nothing waits
        ([CLIENT_CALL], [ToolResult("call_9", "sun")]),  # another call
        ([CLIENT_CALL], [ToolResult("call_1", "sun"), ToolResult("call_9", "sun")]),  # one more
        ([CLIENT_CALL, PendingCall("call_3", "get_weather")], [ToolResult("call_1", "sun")]),  # one missing
    ],
    ids=["nothing-pending", "other-call", "extra", "missing"],
)
def test_results_that_do_not_match_what_the_agent_waits_on_are_a_400(
    pending: list[PendingCall], results: list[ToolResult]
) -> None:
    """Results for calls the agent does not wait on (or not for all it waits on): a 400 naming messages."""
    assert refused(lambda: answer(pending, results, {"get_weather"}, "deny")).param == "messages"


def test_a_denial_covers_every_pending_call() -> None:
    """What unblocks an agent when the user moved on."""
    assert deny([CLIENT_CALL, OWN_CALL], MOVED_ON) == {
        "type": "approval",
        "approvals": [
            {"type": "approval", "tool_call_id": "call_1", "approve": False, "reason": MOVED_ON},
            {"type": "approval", "tool_call_id": "call_2", "approve": False, "reason": MOVED_ON},
        ],
    }
