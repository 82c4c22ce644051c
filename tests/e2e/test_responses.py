"""End to end, the real openai SDK on /v1/responses against a real Letta: text, streams, continued
histories, conversations and a client function tool's full round trip.

The fake LLM behind Letta answers `Echo: <text>`; for `/call NAME {json}` it calls tool NAME when offered,
and once the result is in answers `Echo: <text> | NAME returned: <result>`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import openai
import pytest
from letta_client import Letta
from letta_client.types import AgentState

from tests.e2e.letta_history import runs, user_texts

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def _marker() -> str:
    return uuid.uuid4().hex[:8]


def _call(city: str) -> str:
    return f'/call get_weather {{"city": "{city}"}}'


def _letta_usage(letta: Letta, agent_id: str) -> tuple[int, int, int]:
    usage = letta.runs.usage.retrieve(runs(letta, agent_id)[-1].id)
    return usage.prompt_tokens, usage.completion_tokens, usage.total_tokens


def test_create_answers_with_the_agents_text_and_lettas_usage(
    client: openai.OpenAI, make_agent: Callable[[], AgentState], letta: Letta
) -> None:
    agent = make_agent()
    text = f"hello responses {_marker()}"
    response = client.responses.create(model=agent.name, input=text)
    assert response.status == "completed" and response.model == agent.name
    assert response.output_text == f"Echo: {text}"
    assert response.usage is not None
    usage = (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens)
    assert usage == _letta_usage(letta, agent.id)
    assert user_texts(letta, agent.id) == [text]


def test_stream_gives_events_in_order_and_the_final_response(
    client: openai.OpenAI, make_agent: Callable[[], AgentState]
) -> None:
    """The SDK's stream helper checks response.created comes first and each item is indexed right."""
    agent = make_agent()
    text = f"stream responses {_marker()}"
    with client.responses.stream(model=agent.name, input=text) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") > 1
    assert final.output_text == f"Echo: {text}" and final.status == "completed"


def test_previous_response_id_continues_and_an_older_one_is_refused(
    client: openai.OpenAI, make_agent: Callable[[], AgentState], letta: Letta
) -> None:
    """Each turn goes on from the latest response; one from before is a 409, and nothing reaches Letta."""
    agent = make_agent()
    first = client.responses.create(model=agent.name, input="one")
    second = client.responses.create(input="two", previous_response_id=first.id)  # no model: the id says
    assert second.output_text == "Echo: two" and second.model == agent.name
    with client.responses.stream(model=agent.name, input="three", previous_response_id=second.id) as stream:
        third = stream.get_final_response()
    assert third.output_text == "Echo: three"
    with pytest.raises(openai.ConflictError) as refused:
        client.responses.create(input="from the past", previous_response_id=first.id)
    assert refused.value.code == "response_not_latest"
    assert user_texts(letta, agent.id) == ["one", "two", "three"]


def test_a_response_id_is_refused_to_another_key(
    client: openai.OpenAI, make_agent: Callable[[], AgentState], proxy_url: str
) -> None:
    agent = make_agent()
    first = client.responses.create(model=agent.name, input="mine")
    other = openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="sk-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        other.responses.create(input="x", previous_response_id=first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(input="x", previous_response_id=first.id[:-4] + "AAAA")


def test_a_conversation_keeps_its_own_history(
    client: openai.OpenAI, make_agent: Callable[[], AgentState], letta: Letta
) -> None:
    """`conversation` names a Letta conversation of the agent; a reply continues it by its id."""
    agent = make_agent()
    conversation = letta.conversations.create(agent_id=agent.id).id
    first = client.responses.create(model=agent.name, input="in the conversation", conversation=conversation)
    second = client.responses.create(input="still there", previous_response_id=first.id)
    assert second.output_text == "Echo: still there"
    texts = [getattr(m, "content", "") for m in letta.conversations.messages.list(conversation, limit=50)]
    assert "in the conversation" in texts and "still there" in texts
    default = letta.conversations.messages.list("default", agent_id=agent.id, limit=50)
    assert not [
        m for m in default if m.message_type == "user_message"
    ]  # the agent's own history is untouched
    other = make_agent()
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=other.name, input="x", conversation=conversation)


def _function_call(response: Any) -> Any:
    [call] = [item for item in response.output if item.type == "function_call"]
    return call


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_a_function_tool_round_trip(
    client: openai.OpenAI, make_agent: Callable[[], AgentState], stream: bool
) -> None:
    """The agent calls the client's function; its output goes back with previous_response_id, and the
    agent's answer quotes it."""
    agent = make_agent()
    text = _call("Paris")
    if stream:
        with client.responses.stream(model=agent.name, input=text, tools=[WEATHER]) as events:
            asked = events.get_final_response()
    else:
        asked = client.responses.create(model=agent.name, input=text, tools=[WEATHER])
    call = _function_call(asked)
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert asked.output_text == ""
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}
    answer = client.responses.create(previous_response_id=asked.id, input=[result], tools=[WEATHER])
    assert answer.output_text.startswith(f"Echo: {text} | get_weather returned:")
    assert "sunny, 21 C" in answer.output_text


def test_a_client_resending_its_whole_input_sends_only_what_is_new(
    client: openai.OpenAI, make_agent: Callable[[], AgentState], letta: Letta
) -> None:
    """As Codex and the Agents SDK do without previous_response_id: the items up to the last
    function_call are history; only the function output goes to the agent."""
    agent = make_agent()
    text = _call("Oslo")
    asked = client.responses.create(model=agent.name, input=text, tools=[WEATHER])
    call = _function_call(asked)
    history: list[Any] = [
        {"role": "user", "content": text},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "rain"},
    ]
    answer = client.responses.create(model=agent.name, input=history, tools=[WEATHER])
    assert "rain" in answer.output_text
    assert user_texts(letta, agent.id) == [text]


def test_a_response_is_retrieved_from_lettas_run(
    client: openai.OpenAI, make_agent: Callable[[], AgentState]
) -> None:
    """GET /v1/responses/{id} rebuilds the answer from the Letta run the id names: same text, items, usage."""
    agent = make_agent()
    text = f"remember me {_marker()}"
    made = client.responses.create(model=agent.name, input=text)
    again = client.responses.retrieve(made.id)
    assert again.id == made.id and again.status == "completed" and again.model == agent.name
    assert again.output_text == made.output_text == f"Echo: {text}"
    assert [item.id for item in again.output] == [item.id for item in made.output]
    assert again.usage == made.usage
    asked = client.responses.create(model=agent.name, input=_call("Rome"), tools=[WEATHER])
    with pytest.raises(openai.NotFoundError):  # its turn waits on a tool call: not whole in its run
        client.responses.retrieve(asked.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_" + "A" * 40)


def test_a_turn_that_fails_in_letta_is_a_clean_error_sent_once(
    client: openai.OpenAI, make_agent: Callable[[], AgentState], letta: Letta
) -> None:
    """An agent whose LLM is unreachable: whole, an HTTP 5xx that SDKs must not retry; streamed (Letta's
    stream opens before the LLM fails), response.created then response.failed with a server_error.
    Each reaches Letta once."""
    agent = make_agent()
    config = agent.llm_config.model_dump()
    config["model_endpoint"] = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
    letta.agents.update(agent.id, llm_config=config)
    with pytest.raises(openai.APIStatusError) as failed:
        client.responses.create(model=agent.name, input="fail whole")
    assert failed.value.status_code >= 500 and failed.value.response.headers["x-should-retry"] == "false"
    with client.responses.stream(model=agent.name, input="fail streamed") as stream:
        events = list(stream)
    assert events[0].type == "response.created" and events[-1].type == "response.failed"
    assert events[-1].response.status == "failed" and events[-1].response.error.code == "server_error"
    assert len(runs(letta, agent.id)) == 2


def test_a_function_output_for_no_pending_call_is_a_400_naming_input(
    client: openai.OpenAI, make_agent: Callable[[], AgentState]
) -> None:
    agent = make_agent()
    first = client.responses.create(model=agent.name, input="nothing pending")
    stray = {"type": "function_call_output", "call_id": "call_nobody", "output": "42"}
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(previous_response_id=first.id, input=[stray], tools=[WEATHER])
    assert refused.value.body["param"] == "input"  # type: ignore[index]


def test_a_chat_key_pins_a_conversation_and_its_ids_continue_it(
    client: openai.OpenAI, make_agent: Callable[[], AgentState], letta: Letta
) -> None:
    """X-Letta-Chat-Key works as in chat completions; a response id then names that conversation."""
    agent = make_agent()
    first = client.responses.create(
        model=agent.name, input="pinned", extra_headers={"X-Letta-Chat-Key": f"chat-{_marker()}"}
    )
    second = client.responses.create(input="still pinned", previous_response_id=first.id)
    assert second.output_text == "Echo: still pinned"
    [conversation] = [c.id for c in letta.conversations.list(agent_id=agent.id)]
    texts = [getattr(m, "content", "") for m in letta.conversations.messages.list(conversation, limit=50)]
    assert "pinned" in texts and "still pinned" in texts
