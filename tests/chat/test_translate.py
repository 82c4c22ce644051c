"""chat/translate.py and encode.py: requests to Letta messages, Letta answers (real captures) to OpenAI."""

from typing import Any

import msgspec
import pytest

from proxy.chat import protocol
from proxy.chat.encode import APPROVAL_NOTE, ChunkHeader, TurnTranslator, completion, merge
from proxy.chat.translate import SYSTEM_BLOCK, Limits, letta_messages
from proxy.errors import ProxyError
from tests.letta_captures import event, events, first, turn

TOOL_STREAM = "stream_tool_call.sse"
TOKEN_STREAM = "stream_tokens.sse"


def request(**body: object) -> protocol.ChatCompletionRequest:
    return msgspec.convert(body, protocol.ChatCompletionRequest)


def deltas(translator: TurnTranslator, feed: list[object]) -> list[protocol.Delta]:
    return [delta for item in feed if (delta := translator.feed(item)) is not None]


# --- request side ----------------------------------------------------------------------------------


def test_only_user_turns_after_the_last_assistant_message_are_forwarded() -> None:
    """History the agent already has (before the last assistant message) is never replayed."""
    body = request(
        messages=[
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "old"},
            {"role": "assistant", "content": "answer"},
            {"role": "user", "content": "first new"},
            {"role": "tool", "content": "ignored"},
            {"role": "user", "content": "second new"},
        ]
    )
    assert letta_messages(body) == [
        {"role": "user", "content": "first new"},
        {"role": "user", "content": "second new"},
    ]


def test_a_conversation_without_assistant_messages_forwards_every_user_turn() -> None:
    """A first request sends all its user turns, not just the last."""
    body = request(
        messages=[
            {"role": "system", "content": "s"},
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"},
        ]
    )
    assert [m["content"] for m in letta_messages(body)] == ["a", "b"]


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
        [{"role": "system", "content": "only a system prompt"}],
    ],
)
def test_no_new_user_turn_is_a_400(messages: list[dict[str, str]]) -> None:
    """Nothing new to send is the client's mistake, said as such."""
    with pytest.raises(ProxyError) as caught:
        letta_messages(request(messages=messages))
    assert (caught.value.status, caught.value.param) == (400, "messages")


def test_n_above_one_is_refused() -> None:
    """An agent gives one answer per turn, so n>1 cannot be honoured."""
    with pytest.raises(ProxyError) as caught:
        letta_messages(request(messages=[{"role": "user", "content": "x"}], n=2))
    assert (caught.value.status, caught.value.param) == (400, "n")


def test_text_parts_are_joined_into_one_string() -> None:
    """A list of text parts reaches Letta as the plain text it shows best."""
    body = request(
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}
        ]
    )
    assert letta_messages(body) == [{"role": "user", "content": "one\ntwo"}]


def test_a_data_url_image_becomes_letta_image_content_in_order() -> None:
    """Inline images are passed as Letta base64 image parts, beside the text, in the client's order."""
    body = request(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                ],
            }
        ]
    )
    assert letta_messages(body) == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                },
            ],
        }
    ]


@pytest.mark.parametrize(
    "part, param",
    [
        (
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            "messages[0].content[0].image_url.url",
        ),
        (
            {"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}},
            "messages[0].content[0].image_url.url",
        ),
        ({"type": "input_audio", "input_audio": {"data": "x"}}, "messages[0].content[0].type"),
    ],
)
def test_unsupported_parts_are_a_400_naming_the_part(part: dict[str, object], param: str) -> None:
    """Remote image URLs and unknown part types are refused, never silently dropped."""
    with pytest.raises(ProxyError) as caught:
        letta_messages(request(messages=[{"role": "user", "content": [part]}]))
    assert (caught.value.status, caught.value.param) == (400, param)


@pytest.mark.parametrize("content", ["", "   ", [], None])
def test_an_empty_user_turn_is_a_400(content: object) -> None:
    """An empty turn would reach the agent as noise; it is refused."""
    with pytest.raises(ProxyError) as caught:
        letta_messages(request(messages=[{"role": "user", "content": content}]))
    assert caught.value.status == 400


# --- whole answers -------------------------------------------------------------------------------


def test_a_captured_turn_becomes_a_chat_completion() -> None:
    """Text, finish reason and Letta's own token counts come through as OpenAI's fields."""
    result = completion(turn("send_message.json"), TurnTranslator(), ChunkHeader("chatcmpl-1", 7, "bot"))
    assert msgspec.to_builtins(result) == {
        "object": "chat.completion",
        "id": "chatcmpl-1",
        "created": 7,
        "model": "bot",
        "choices": [
            {
                "index": 0,
                "logprobs": None,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Echo: hello from the proxy test"},
            }
        ],
        "usage": {"prompt_tokens": 712, "completion_tokens": 7, "total_tokens": 719},
    }


def test_a_captured_tool_call_turn_keeps_the_call_and_drops_the_tool_return() -> None:
    """In `openai` mode the agent's tool call is an OpenAI tool call; the tool's result is not shown."""
    translator = TurnTranslator("openai")
    message = (
        completion(turn("send_message_tool_call.json"), translator, ChunkHeader("c", 0, "bot"))
        .choices[0]
        .message
    )
    assert message.content == "Echo: /tool proxy"
    assert message.tool_calls == [
        protocol.ToolCall(
            id="call_498dbaf8c8074b708868",
            function=protocol.FunctionCall(name="conversation_search", arguments='{"query": "proxy"}'),
        )
    ]


def test_reasoning_is_dropped_unless_asked_for() -> None:
    """A memgpt agent's reasoning stays private by default and is reasoning_content when enabled."""
    hidden = (
        completion(turn("send_message_memgpt_v2.json"), TurnTranslator(), ChunkHeader("c", 0, "m"))
        .choices[0]
        .message
    )
    shown = completion(
        turn("send_message_memgpt_v2.json"), TurnTranslator(reasoning=True), ChunkHeader("c", 0, "m")
    )
    assert (hidden.content, hidden.reasoning_content) == ("Echo: hello memgpt", None)
    assert shown.choices[0].message.reasoning_content == "The user said 'hello memgpt'. I will echo it back."


def test_several_assistant_messages_are_joined_with_a_blank_line() -> None:
    """Two assistant messages of one turn read as two paragraphs, in order."""
    base = first(TOKEN_STREAM, "assistant_message")
    feed = [event(base, id="message-a", content="first"), event(base, id="message-b", content="second")]
    assert merge(deltas(TurnTranslator(), feed)).content == "first\n\nsecond"


def test_assistant_content_as_a_list_of_parts_is_joined() -> None:
    """Letta may send assistant content as text parts; they read as one text."""
    base = first(TOKEN_STREAM, "assistant_message")
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": " world"}]
    assert merge(deltas(TurnTranslator(), [event(base, content=parts)])).content == "Hello world"


# --- streamed answers ----------------------------------------------------------------------------


def test_token_stream_becomes_one_content_delta_per_token() -> None:
    """Each token Letta streams is one content delta; pings, stop and usage are not content."""
    translator = TurnTranslator()
    out = deltas(translator, events(TOKEN_STREAM))
    assert [d.content for d in out] == ["Echo:", " stream", " me", " token", " by", " token"]
    assert translator.usage == protocol.Usage(771, 7, 778)
    assert translator.finish_reason == "stop"


def test_streamed_tool_call_fragments_stay_one_call() -> None:
    """The first fragment opens the call (id, type, name); later ones add arguments at the same index."""
    out = deltas(TurnTranslator("openai"), events(TOOL_STREAM))
    calls = [call for d in out for call in d.tool_calls or []]
    assert [msgspec.to_builtins(call) for call in calls] == [
        {
            "index": 0,
            "id": "call_4b32ae8f8c024ffa8c26",
            "type": "function",
            "function": {"name": "conversation_search", "arguments": ""},
        },
        {"index": 0, "function": {"arguments": '{"query": "h'}},
        {"index": 0, "function": {"arguments": 'ello"}'}},
    ]
    merged = merge(out)
    assert merged.tool_calls is not None and merged.tool_calls[0].function.arguments == '{"query": "hello"}'
    assert merged.content == "Echo: /tool hello"


def test_two_tool_calls_get_distinct_indexes() -> None:
    """Separate calls are told apart by index, fragments of each landing on their own call."""
    opening = first(TOOL_STREAM, "tool_call_message")
    call = opening["tool_call"]
    second = {**call, "tool_call_id": "call_second", "name": "archival_memory_search"}
    feed = [
        event(opening),
        event(opening, tool_call=second, tool_calls=second),
        event(opening, tool_call={"arguments": "{}", "tool_call_id": "call_second"}),
    ]
    out = deltas(TurnTranslator("openai"), feed)
    assert [(c.index, c.id) for d in out for c in d.tool_calls or []] == [
        (0, "call_4b32ae8f8c024ffa8c26"),
        (1, "call_second"),
        (1, None),
    ]


def test_tool_calls_can_be_shown_as_reasoning_or_dropped() -> None:
    """For UIs that would execute tool calls: reasoning text instead, or nothing."""
    as_text = merge(deltas(TurnTranslator(tool_calls="reasoning"), events(TOOL_STREAM)))
    dropped = merge(deltas(TurnTranslator(tool_calls="drop"), events(TOOL_STREAM)))
    assert as_text.tool_calls is None and dropped.tool_calls is None
    assert as_text.reasoning_content == 'Tool call conversation_search: {"query": "hello"}'
    assert dropped.reasoning_content is None and dropped.content == "Echo: /tool hello"


def test_hidden_reasoning_tool_returns_and_pings_never_become_output() -> None:
    """Only assistant text and tool calls reach the client, even with reasoning enabled."""
    translator = TurnTranslator(reasoning=True)
    tool_return = first(TOOL_STREAM, "tool_return_message")
    ping = first(TOKEN_STREAM, "ping")
    assert deltas(translator, [event(tool_return), event(ping)]) == []


# --- how a turn ends -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reason, finish",
    [
        ("end_turn", "stop"),
        ("no_tool_call", "stop"),
        ("tool_rule", "stop"),
        ("cancelled", "stop"),
        ("max_steps", "length"),
        ("max_tokens_exceeded", "length"),
        ("context_window_overflow_in_system_prompt", "length"),
        ("requires_approval", "stop"),
    ],
)
def test_every_stop_reason_maps_to_an_openai_finish_reason(reason: str, finish: str) -> None:
    """finish_reason is always one of OpenAI's values."""
    translator = TurnTranslator()
    translator.feed(event({"message_type": "stop_reason", "stop_reason": reason}))
    assert translator.finish_reason == finish


def test_waiting_for_approval_is_explained_in_the_answer() -> None:
    """A turn paused for approval says so, rather than ending silently."""
    delta = TurnTranslator().stop("requires_approval")
    assert delta is not None and delta.content == APPROVAL_NOTE


@pytest.mark.parametrize(
    "reason", ["error", "llm_api_error", "invalid_llm_response", "invalid_tool_call", "insufficient_credits"]
)
def test_failed_turns_are_upstream_errors_that_must_not_be_retried(reason: str) -> None:
    """A failed turn reached the agent: it is a 502 that tells clients not to resend it."""
    with pytest.raises(ProxyError) as caught:
        TurnTranslator().feed(event({"message_type": "stop_reason", "stop_reason": reason}))
    assert (caught.value.status, caught.value.code, caught.value.retry_safe) == (502, reason, False)


def test_an_error_event_in_the_stream_is_an_upstream_error() -> None:
    """Letta's `error_message` event ends the turn as an error carrying Letta's error type."""
    data = {
        "message_type": "error_message",
        "error_type": "llm_error",
        "message": "model overloaded",
        "run_id": "run-1",
    }
    with pytest.raises(ProxyError) as caught:
        TurnTranslator().feed(event(data))
    assert caught.value.code == "llm_error" and "model overloaded" in caught.value.message


def test_usage_total_is_derived_when_letta_leaves_it_out() -> None:
    """Usage is never null where Letta reports the parts."""
    usage = first(TOKEN_STREAM, "usage_statistics")
    translator = TurnTranslator()
    translator.feed(event(usage, total_tokens=None))
    assert translator.usage == protocol.Usage(771, 7, 778)


# --- limits --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "limits, messages, code",
    [
        (Limits(messages=2), [{"role": "user", "content": "x"}] * 3, "too_many_messages"),
        (
            Limits(text_chars=5),
            [{"role": "user", "content": "abc"}, {"role": "user", "content": "def"}],
            "message_too_long",
        ),
        (
            Limits(image_bytes=3),
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAAAAAA"}}
                    ],
                }
            ],
            "image_too_large",
        ),
    ],
)
def test_requests_beyond_the_limits_are_refused(
    limits: Limits, messages: list[dict[str, Any]], code: str
) -> None:
    """Message count, forwarded text and image size are bounded, each with its own error code."""
    with pytest.raises(ProxyError) as caught:
        letta_messages(request(messages=messages), limits)
    assert (caught.value.status, caught.value.code) == (400, code)


def test_requests_at_the_limits_pass() -> None:
    """The bounds are inclusive: exactly at the limit is accepted."""
    messages = [
        {"role": "user", "content": "abc"},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
        },
    ]
    assert (
        len(letta_messages(request(messages=messages), Limits(messages=2, text_chars=3, image_bytes=3))) == 2
    )


# --- settings shared with the Responses API --------------------------------------------------------


def test_system_messages_are_forwarded_as_a_marked_block_only_when_set_and_new() -> None:
    """PROXY_SYSTEM_MESSAGES=forward: the new system/developer text goes first, marked; old is not resent."""
    body = request(
        messages=[
            {"role": "system", "content": "old rules"},
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "developer", "content": [{"type": "text", "text": "new rules"}]},
            {"role": "user", "content": "c"},
        ]
    )
    assert letta_messages(body) == [{"role": "user", "content": "c"}]
    forwarded = letta_messages(body, Limits(system_messages="forward"))
    assert forwarded == [{"role": "user", "content": f"{SYSTEM_BLOCK.format(text='new rules')}\n\nc"}]


def test_image_urls_pass_only_for_allowed_hosts() -> None:
    """Letta fetches a URL image itself: only the hosts of PROXY_IMAGE_URL_HOSTS may be named."""
    url = "https://images.example.com/cat.png"
    body = request(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])
    with pytest.raises(ProxyError) as refused:
        letta_messages(body)
    assert refused.value.param == "messages[0].content[0].image_url.url"
    allowed = Limits(image_url_hosts=frozenset({"images.example.com"}))
    assert letta_messages(body, allowed)[0]["content"] == [
        {"type": "image", "source": {"type": "url", "url": url}}
    ]


# --- client tools and approvals ------------------------------------------------------------------

APPROVAL_STREAM = "stream_approval.sse"
OWN_APPROVAL_STREAM = "stream_own_approval.sse"
WEATHER = frozenset({"get_weather"})


def test_a_streamed_client_tool_call_is_openai_tool_calls() -> None:
    """The agent's call to a client tool opens with id and name, its arguments follow in fragments at the
    same index, and the turn finishes with "tool_calls", not the approval note."""
    translator = TurnTranslator(client_tools=WEATHER)
    out = deltas(translator, events(APPROVAL_STREAM))
    assert [msgspec.to_builtins(call) for d in out for call in d.tool_calls or []] == [
        {
            "index": 0,
            "id": "call_9f690cdd9017469fabb8",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        },
        {"index": 0, "function": {"arguments": '{"city": "Pa'}},
        {"index": 0, "function": {"arguments": 'ris"}'}},
    ]
    assert all(d.content is None for d in out)
    assert (translator.finish_reason, translator.usage) == ("tool_calls", protocol.Usage(526, 4, 530))


def test_a_whole_client_tool_call_turn_is_a_tool_calls_completion() -> None:
    """Non-streamed, the same call is one whole tool call with no content."""
    result = completion(
        turn("send_approval.json"), TurnTranslator(client_tools=WEATHER), ChunkHeader("c", 0, "bot")
    )
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message == protocol.AssistantMessage(
        content=None,
        tool_calls=[
            protocol.ToolCall(
                id="call_8ce62fe16c9b448f9a25",
                function=protocol.FunctionCall(name="get_weather", arguments='{"city": "Oslo"}'),
            )
        ],
    )


def test_the_turn_after_a_tool_result_is_the_agents_answer() -> None:
    """The tool_return turn streams the agent's answer, which quotes the client's result."""
    translator = TurnTranslator(client_tools=WEATHER)
    text = merge(deltas(translator, events("stream_tool_return.sse"))).content or ""
    assert text.startswith('Echo: /call get_weather {"city": "Rome"} | get_weather returned: ')
    assert '"message": "cloudy, 18 C"' in text and translator.finish_reason == "stop"


def test_with_client_tools_the_agents_own_calls_are_never_tool_calls() -> None:
    """Even in `openai` mode: a client offering tools would run the agent's own calls (Letta ran them)."""
    translator = TurnTranslator("openai", client_tools=WEATHER)
    out = merge(deltas(translator, events(TOOL_STREAM)))
    assert out.tool_calls is None
    assert out.reasoning_content == 'Tool call conversation_search: {"query": "hello"}'
    assert translator.finish_reason == "stop"


def test_an_own_tool_waiting_for_approval_is_shown_as_the_agents_call_and_explained() -> None:
    """In `deny` mode an approval request for the agent's own tool is not the client's to answer."""
    translator = TurnTranslator(client_tools=WEATHER)
    out = merge(deltas(translator, events(OWN_APPROVAL_STREAM)))
    assert out.tool_calls is None and out.content == APPROVAL_NOTE
    assert out.reasoning_content == 'Tool call conversation_search: {"query": "weather"}'
    assert translator.finish_reason == "stop"


def test_in_client_mode_an_own_tool_waiting_for_approval_is_a_tool_call() -> None:
    """In `client` approval mode the client answers the agent's own calls too."""
    translator = TurnTranslator(approvals="client")
    out = merge(deltas(translator, events(OWN_APPROVAL_STREAM)))
    assert out.tool_calls is not None and out.tool_calls[0].function.name == "conversation_search"
    assert out.content is None and translator.finish_reason == "tool_calls"


def test_usage_is_summed_over_the_letta_requests_of_one_answer() -> None:
    """An answer that took a denial and a second Letta request counts the tokens of both."""
    usage = first(TOKEN_STREAM, "usage_statistics")
    translator = TurnTranslator()
    translator.feed(event(usage))
    translator.feed(event(usage, prompt_tokens=10, completion_tokens=1, total_tokens=11))
    assert translator.usage == protocol.Usage(781, 8, 789)


def test_one_message_with_a_client_call_and_an_own_call_keeps_both() -> None:
    """Letta may put both in one approval request: the client's is a tool call, the agent's is told."""
    whole = first(APPROVAL_STREAM, "approval_request_message")
    own = {"name": "conversation_search", "arguments": "{}", "tool_call_id": "call_own"}
    mine = {"name": "get_weather", "arguments": "{}", "tool_call_id": "call_mine"}
    out = merge(
        deltas(TurnTranslator(client_tools=WEATHER), [event(whole, tool_call=None, tool_calls=[mine, own])])
    )
    assert [call.id for call in out.tool_calls or []] == ["call_mine"]
    assert out.reasoning_content == "Tool call conversation_search: {}"
