"""Serving one chat completion: from a parsed request to a whole answer or the frames of a stream.

Three paths: an Open WebUI background task or a LiteLLM health check, both answered here without any
agent; or a real turn, which waits for the agent's previous turns, goes to the agent's history or to
the conversation a chat key pins, and comes back whole or streamed.
"""

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import msgspec

from proxy.agent_choice import AgentChoice, with_speaker
from proxy.approvals import Approvals, TurnInput
from proxy.auth import Client
from proxy.chat import protocol
from proxy.chat.encode import ChunkHeader, TurnTranslator, completion, local_completion
from proxy.chat.stream import local_frames, sse_frames
from proxy.chat.translate import Limits, letta_messages
from proxy.disconnect import ClientGone, ClientWatch
from proxy.errors import bad_request
from proxy.letta import Agent, Letta
from proxy.letta.wire import ClientTool, LettaMessage, Message
from proxy.settings import Settings, ToolCallMode
from proxy.tasks import detect_task, local_answer
from proxy.tools import CLIENT_TOOL_AGENT_TYPES, ToolResult, chat_functions, chat_tool_results, client_tools
from proxy.turns import TurnQueue

HEALTH_CHECK_HEADER = "x-letta-proxy-health-check"
LOCAL_MODEL = "letta-openai-proxy"  # the `model` of an answer the proxy gives itself, when none was named

T = TypeVar("T")
Whole = TypeVar("Whole", bound=msgspec.Struct)  # a whole answer: a chat.completion, a response
Answer = protocol.ChatCompletion | AsyncGenerator[bytes, None]
Prepare = Callable[[Agent, str | None], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Target:
    """Where a turn goes: the agent (a model name or id), and which of its histories.

    By default the agent's own history, or the conversation a chat key (`AgentChoice.chat_key`'s) pins.
    `pinned` names the history outright (`conversation`, None for the agent's own), as a Responses API id
    or `conversation` does.
    """

    model: str | None
    user: str | None = None
    headers: Mapping[str, str] | None = None  # they may name the end user whose own agent a template has
    chat_key: str | None = None
    conversation: str | None = None
    pinned: bool = False


@dataclass(frozen=True, slots=True)
class Sent:
    """What a request sends the agent, whatever the API: new user turns, tool results, client tools."""

    messages: list[Message]
    results: list[ToolResult] = field(default_factory=list)
    client_tools: list[ClientTool] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Turn:
    """A turn sent: what went (agent, conversation, tools) and Letta's events, whole or as a live stream."""

    input: TurnInput
    events: list[LettaMessage] | AsyncGenerator[LettaMessage, None]

    @property
    def agent(self) -> Agent:
        return self.input.agent

    @property
    def conversation(self) -> str | None:
        return self.input.conversation


@dataclass(frozen=True, slots=True)
class Served(Generic[Whole]):
    """The answer (whole, or stream frames), and what the access log says of it."""

    answer: Whole | AsyncGenerator[bytes, None]
    agent: str | None = None
    translator: TurnTranslator | None = None


class Chat:
    def __init__(self, letta: Letta, choice: AgentChoice, turns: TurnQueue, settings: Settings) -> None:
        self._letta = letta
        self._choice = choice
        self._turns = turns
        self._settings = settings
        self._approvals = Approvals(letta, settings.proxy_tool_approvals)
        self.stall_seconds = settings.proxy_stall_seconds  # for the answer's sender
        self._limits = Limits(
            settings.proxy_max_messages,
            settings.proxy_max_text_chars,
            settings.proxy_max_image_bytes,
            frozenset(settings.proxy_image_url_hosts),
            settings.proxy_system_messages,
        )

    @property
    def limits(self) -> Limits:
        return self._limits

    async def serve(
        self,
        client: Client,
        request: protocol.ChatCompletionRequest,
        headers: Mapping[str, str],
        watch: ClientWatch,
    ) -> Served[protocol.ChatCompletion]:
        header = ChunkHeader(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), request.model or LOCAL_MODEL)
        include_usage = request.stream_options is not None and request.stream_options.include_usage
        if self._settings.proxy_task_requests == "skip" and (task := detect_task(request.messages, headers)):
            return Served(_local(local_answer(task, request.messages), header, request.stream, include_usage))
        if headers.get(HEALTH_CHECK_HEADER, "").strip().lower() in ("1", "true"):
            # LiteLLM's health checks carry it (from `health_check_params`); real traffic never does.
            agent = await self._choice.named(client, request.model, request.user)  # key, Letta, agent
            header = ChunkHeader(header.id, header.created, agent.name)
            return Served(_local("", header, request.stream, include_usage), agent.name)
        return await self._turn(client, request, headers, header, include_usage, watch)

    async def _turn(
        self,
        client: Client,
        request: protocol.ChatCompletionRequest,
        headers: Mapping[str, str],
        header: ChunkHeader,
        include_usage: bool,
        watch: ClientWatch,
    ) -> Served[protocol.ChatCompletion]:
        """A real turn, answered as a chat.completion or its chunks."""
        forward = self._settings.proxy_client_tools == "forward"
        offered = client_tools(chat_functions(request.tools), request.tool_choice) if forward else []
        results = chat_tool_results(request.messages, self._limits.text_chars) if forward else []
        messages = letta_messages(with_speaker(request, headers), self._limits, results_given=bool(results))
        chat_key = await self._choice.chat_key(headers, request.messages)
        target = Target(request.model, request.user, headers, chat_key=chat_key)
        turn = await self.run(client, target, Sent(messages, results, offered), watch, stream=request.stream)
        header = ChunkHeader(header.id, header.created, turn.agent.name)
        translator = self.translator(turn, self._settings.proxy_tool_calls)
        if isinstance(turn.events, list):
            return Served(completion(turn.events, translator, header), turn.agent.name, translator)
        frames = sse_frames(
            turn.events,
            translator,
            header,
            include_usage=include_usage,
            idle_seconds=self._settings.proxy_keepalive_seconds,
        )
        return Served(frames, turn.agent.name, translator)

    async def run(
        self,
        client: Client,
        target: Target,
        sent: Sent,
        watch: ClientWatch,
        *,
        stream: bool,
        prepare: Prepare | None = None,
    ) -> Turn:
        """One turn, whatever the API: one at a time per agent (or per conversation), whole or streamed.

        `prepare` runs once the turn has its place in the queue, before anything reaches Letta: checks
        that need the agent's history to stay as it is until the turn is sent. A client that leaves while
        the turn waits in the queue never reaches Letta; one that leaves while Letta works on a whole
        turn, or before its stream has started, gets the run cancelled before the agent is free for the
        next turn. A started stream ends its turn itself, however it ends.
        """
        agent = await self._choice.resolve(client, target.model, target.user, target.headers)
        offered = self._usable(agent, sent.client_tools)
        chat_key = None if target.pinned else target.chat_key
        line = target.conversation or chat_key
        release = await watch.guard(self._turns.enter(agent.id if line is None else f"{agent.id}:{line}"))
        conversation = target.conversation
        reached = streaming = False

        def end_stream() -> None:
            if streaming:  # a stream that failed to open is ended below, once its run is cancelled
                release()

        try:
            if chat_key:
                conversation = await watch.guard(self._choice.conversation(client, agent, chat_key))
            if prepare is not None:
                await watch.guard(prepare(agent, conversation))
            turn = TurnInput(agent, sent.messages, sent.results, offered, conversation)
            reached = True
            if not stream and conversation is None:
                whole = await watch.guard(self._approvals.send(turn))
                release()
                return Turn(turn, whole)
            events = await watch.guard(self._approvals.stream(turn, on_close=end_stream))
            streaming = True
        except ClientGone:
            if reached:  # the turn may have reached Letta: its run, if any, must not outlive the client
                await self._letta.cancel_active(agent, conversation)
            release()
            raise
        except BaseException:
            release()  # ending a turn twice is harmless: a stream that failed to open has ended it already
            raise
        if not stream:  # a conversation's turn, which Letta only streams: gathered whole
            return Turn(turn, await watch.guard(_gather(events)))
        return Turn(turn, events)

    def translator(self, turn: Turn, tool_calls: ToolCallMode) -> TurnTranslator:
        """A translator for the turn: the client tools it offered are the calls the client must answer."""
        return TurnTranslator(
            tool_calls,
            self._settings.proxy_reasoning,
            turn.input.client_names,
            self._settings.proxy_tool_approvals,
        )

    def _usable(self, agent: Agent, offered: list[ClientTool]) -> list[ClientTool]:
        """Client tools for agent types that can call them; for others, none, or a 400 if so configured."""
        if not offered or agent.type is None or agent.type in CLIENT_TOOL_AGENT_TYPES:
            return offered
        if self._settings.proxy_client_tools_unsupported == "reject":
            raise bad_request(
                f"The agent '{agent.name}' ({agent.type}) cannot call client tools: send no tools.",
                param="tools",
                code="tools_unsupported",
            )
        return []


async def _gather(events: AsyncIterator[T]) -> list[T]:
    return [event async for event in events]


def _local(text: str, header: ChunkHeader, stream: bool, include_usage: bool) -> Answer:
    """An answer given without any agent, in the form the client asked for."""
    if stream:
        return local_frames(header, text, include_usage)
    return local_completion(text, header)
