"""One turn, whatever the API: the agent chosen, its place in the queue, the turn sent or streamed, the
run cancelled if the client leaves. Chat completions and the Responses API each put their own request
into a `Target` and a `Sent`, and encode the `Turn`'s Letta events in their own format, both from the
chat deltas of a `TurnTranslator`: the one shared reading of Letta's events.
"""

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import msgspec

from proxy.agent_choice import AgentChoice
from proxy.approvals import Approvals, TurnInput
from proxy.auth import Client
from proxy.chat.encode import TurnTranslator
from proxy.disconnect import ClientGone, ClientWatch
from proxy.errors import bad_request
from proxy.letta import Agent, Letta
from proxy.letta.wire import ClientTool, LettaMessage, Message
from proxy.settings import Settings, ToolCallMode
from proxy.tools import CLIENT_TOOL_AGENT_TYPES, ToolResult
from proxy.turns import TurnQueue

T = TypeVar("T")
Whole = TypeVar("Whole", bound=msgspec.Struct)  # a whole answer: a chat.completion, a response
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
    translator: TurnTranslator | None = None  # counts the tokens, for the access log


class TurnRunner:
    def __init__(self, letta: Letta, choice: AgentChoice, turns: TurnQueue, settings: Settings) -> None:
        self._letta = letta
        self._choice = choice
        self._turns = turns
        self._settings = settings
        self._approvals = Approvals(letta, settings.proxy_tool_approvals)

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
