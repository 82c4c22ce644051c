"""Serving one Responses API request over the turn chat completions take too (`TurnRunner.run`): same
keys, agents, queue, errors and Letta calls; only the input and the output speak the Responses format.

Which history a turn continues: the one a `previous_response_id` names (its agent and conversation are
sealed in the id), else the Letta `conversation` named, else, as in chat, the agent's own history or
the conversation a chat key pins. A previous response must be the latest turn of its history: Letta can
fork a conversation only whole (POST /v1/conversations/{id}/fork copies every message), never at an
older turn, so continuing from an older one is refused with a 409 rather than answered from the wrong
history.
"""

import time
from collections.abc import Mapping
from typing import Any, cast

import msgspec

from proxy.agent_choice import AgentChoice
from proxy.auth import Client
from proxy.chat.encode import TurnTranslator
from proxy.chat.translate import Limits
from proxy.disconnect import ClientWatch
from proxy.errors import ProxyError, bad_request, upstream_failure
from proxy.letta import Agent, Letta
from proxy.letta.wire import LettaMessage
from proxy.responses import protocol as wire
from proxy.responses.encode import Header, ResponseEncoder
from proxy.responses.ids import ResponseRef, make_response_id, not_found, read_response_id
from proxy.responses.stream import ResponseFramer
from proxy.responses.translate import functions, turn_input
from proxy.settings import Settings, ToolCallMode
from proxy.sse import turn_frames
from proxy.tools import client_tools
from proxy.turn_runner import Prepare, Sent, Served, Target, Turn, TurnRunner

RECENT = 50  # messages looked through for the previous response's turn


class Responses:
    def __init__(self, runner: TurnRunner, letta: Letta, choice: AgentChoice, settings: Settings) -> None:
        self._runner = runner
        self._limits = Limits.of(settings)
        self.stall_seconds = settings.proxy_stall_seconds  # for the answer's sender, as Chat's
        self._letta = letta
        self._choice = choice
        self._settings = settings
        self._forward_tools = settings.proxy_client_tools == "forward"
        # The agent's own tool calls were run by Letta: never function_call items, which a client would run;
        # shown in the reasoning item, if there is one and PROXY_TOOL_CALLS says so.
        shown = settings.proxy_reasoning and settings.proxy_tool_calls == "reasoning"
        self._tool_calls: ToolCallMode = "reasoning" if shown else "drop"

    async def create(
        self, client: Client, request: wire.ResponseRequest, headers: Mapping[str, str], watch: ClientWatch
    ) -> Served[wire.Response]:
        created_at = int(time.time())
        if request.previous_response_id and request.conversation_id:
            raise bad_request(
                "Send either previous_response_id or conversation, not both.", param="conversation"
            )
        previous = None
        if request.previous_response_id:
            previous = read_response_id(request.previous_response_id, client.key)
        results, message = turn_input(request, self._limits, continuing=previous is not None)
        if message is None and not self._forward_tools:
            raise bad_request(
                "No user message in the new input: function outputs are not forwarded here "
                "(PROXY_CLIENT_TOOLS=ignore).",
                param="input",
            )
        offered = client_tools(functions(request), request.tool_choice) if self._forward_tools else []
        sent = Sent([message] if message else [], results if self._forward_tools else [], offered)
        target, prepare = await self._target(request, headers, previous)
        try:
            turn = await self._runner.run(client, target, sent, watch, stream=request.stream, prepare=prepare)
        except ProxyError as error:
            if error.param == "messages":  # the shared checks of tool results name chat's field
                error.param = "input"
            raise
        translator = self._runner.translator(turn, self._tool_calls)

        def header(run_id: str | None) -> Header:
            return self._header(client, request, turn, run_id, created_at)

        if isinstance(turn.events, list):
            run_id = next(
                (event.run_id for event in turn.events if event.run_id and event.message_type != "ping"), None
            )
            encoder = ResponseEncoder(header(run_id))
            encoder.feed_turn(turn.events, translator)
            encoder.finish(translator.finish_reason, translator.usage)
            return Served(cast(wire.Response, encoder.result), turn.agent.name, translator)
        framed = turn_frames(
            turn.events,
            translator,
            ResponseFramer(header),
            idle_seconds=self._settings.proxy_keepalive_seconds,
        )
        return Served(framed, turn.agent.name, translator)

    async def retrieve(self, client: Client, response_id: str) -> wire.Response:
        """A past response, rebuilt from the Letta run its id names (the proxy stores nothing).

        Only a turn that Letta's run holds whole: one that stopped on a tool call may have gone on in
        another run (an approval the proxy denied), so it is not rebuilt; nor is a run Letta no longer has.
        """
        ref = read_response_id(response_id, client.key, param="response_id")
        agent = next((a for a in await self._choice.visible(client) if a.id == ref.agent_id), None)
        found = await self._letta.run(ref.run_id) if agent is not None and ref.run_id else None
        if agent is None or found is None:
            raise not_found(response_id, "response_id")
        run, messages, usage = found
        if run.stop_reason == "requires_approval":
            raise ProxyError(
                404,
                f"Response '{response_id[:100]}' cannot be rebuilt from Letta: its turn stopped on a tool "
                "call, and what followed is not in its run.",
                code="response_not_found",
                param="response_id",
            )
        created_at = int(run.created_at.timestamp()) if run.created_at else 0
        encoder = ResponseEncoder(Header(response_id, created_at, agent.name))
        translator = TurnTranslator(self._tool_calls, self._settings.proxy_reasoning)
        try:
            encoder.feed_turn(messages, translator)
            translator.count(usage)
            if run.status == "completed":
                translator.stop(run.stop_reason or "end_turn")
                encoder.finish(translator.finish_reason, translator.usage)
                return cast(wire.Response, encoder.result)
        except ProxyError as error:
            encoder.fail(error)
            return cast(wire.Response, encoder.result)
        if run.status in ("failed", "cancelled"):
            encoder.fail(upstream_failure(f"The agent's turn {run.status} in Letta.", code=run.stop_reason))
            return cast(wire.Response, encoder.result)
        return encoder.response("in_progress", translator.usage)

    async def _target(
        self, request: wire.ResponseRequest, headers: Mapping[str, str], previous: ResponseRef | None
    ) -> tuple[Target, Prepare | None]:
        if previous is not None:
            target = Target(
                previous.agent_id, request.user, conversation=previous.conversation_id, pinned=True
            )
            return target, self._continues(previous, request.model)
        if request.conversation_id:
            target = Target(
                request.model, request.user, headers, conversation=request.conversation_id, pinned=True
            )
            return target, self._owned(request.conversation_id)
        chat_key = await self._choice.chat_key(headers, [])
        return Target(request.model, request.user, headers, chat_key=chat_key), None

    def _continues(self, previous: ResponseRef, model: str | None) -> Prepare:
        """Checks, in the turn's place in the queue, that the previous response is its history's latest."""

        async def prepare(agent: Agent, conversation: str | None) -> None:
            if model and model not in (agent.name, agent.id):
                raise bad_request(
                    f"previous_response_id belongs to another model than '{model}'.", param="model"
                )
            if not is_latest(await self._letta.recent_messages(agent, conversation, RECENT), previous.run_id):
                raise ProxyError(
                    409,
                    "previous_response_id is not the latest response of its conversation: the agent's "
                    "history has moved on, and Letta cannot branch it at an older turn. Continue from the "
                    "latest response, or start a new conversation.",
                    code="response_not_latest",
                    param="previous_response_id",
                )

        return prepare

    def _owned(self, conversation: str) -> Prepare:
        async def prepare(agent: Agent, _: str | None) -> None:
            if await self._letta.conversation_agent(conversation) != agent.id:
                raise ProxyError(
                    404,
                    f"Conversation '{conversation[:100]}' not found for this model.",
                    code="conversation_not_found",
                    param="conversation",
                )

        return prepare

    def _header(
        self, client: Client, request: wire.ResponseRequest, turn: Turn, run_id: str | None, created_at: int
    ) -> Header:
        ref = ResponseRef(turn.agent.id, turn.conversation, run_id or "")
        tools: tuple[Any, ...] = tuple(msgspec.to_builtins(request.tools or []))
        return Header(
            make_response_id(ref, client.key),
            created_at,
            turn.agent.name,
            previous_response_id=request.previous_response_id,
            instructions=request.instructions,
            tools=tools,
        )


def is_latest(newest_first: list[LettaMessage], run_id: str) -> bool:
    """Whether no user message came into the history after the turn `run_id` began.

    The turn's own later Letta requests (tool results, denials) do not count; a continuation older than
    the messages looked through is refused too.
    """
    for message in newest_first:
        if message.run_id == run_id:
            return True
        if message.message_type == "user_message":
            return False
    return False
