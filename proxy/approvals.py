"""One answer across the waits Letta stops a turn for, so that no agent is ever left waiting on a tool call.

- Tool results answer exactly the calls the agent waits on (looked up first, so a mismatch is a 400).
- A new turn that finds the agent waiting (Letta refuses it: a 409, or an error before anything else in a
  stream; nothing of it was kept) denies what is pending, because the user moved on, and goes again with
  the denial in the same Letta request, once.
- In `deny` mode, a stop for the agent's own tools' approval is denied at once and the agent goes on,
  within the same answer; a stop for a client tool ends the answer with tool_calls.
"""

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import cast

from proxy.errors import ProxyError
from proxy.letta import Agent, Letta
from proxy.letta.wire import ClientTool, LettaMessage, Message
from proxy.settings import ApprovalMode
from proxy.tools import MOVED_ON, NO_APPROVER, PendingCall, ToolResult, answer, deny, pending_calls

PENDING = "pending_approval"  # the code of Letta's 409 PENDING_APPROVAL, as proxy/letta/ reports it
MAX_ROUNDS = 4  # Letta requests per answer: a model that keeps calling a denied tool stops here
QUIET = frozenset({"ping", "stop_reason"})  # what a refused stream carries before its error


@dataclass(frozen=True, slots=True)
class TurnInput:
    """What one answer sends, whatever the API: new user turns, tool results, the client's tools."""

    agent: Agent
    messages: list[Message]
    results: list[ToolResult] = field(default_factory=list)
    client_tools: list[ClientTool] = field(default_factory=list)
    conversation: str | None = None

    @property
    def client_names(self) -> frozenset[str]:
        return frozenset(tool["name"] for tool in self.client_tools)


@dataclass
class _Round:
    """One Letta request of an answer: the calls it waits on, its stop reason (held back), whether
    anything but pings came."""

    calls: dict[str, str] = field(default_factory=dict)
    stop: LettaMessage | None = None
    started: bool = False

    def hold(self, event: LettaMessage) -> bool:
        """Notes the event; True for the stop reason, passed on only once the answer is known to end."""
        if event.message_type == "approval_request_message":
            self.calls.update((c.call_id, c.name) for c in pending_calls(event) if c.name)
        if event.message_type == "stop_reason":
            self.stop = event
            return True
        self.started = self.started or event.message_type not in QUIET
        return False


class Approvals:
    def __init__(self, letta: Letta, mode: ApprovalMode) -> None:
        self._letta = letta
        self._mode = mode

    async def send(self, turn: TurnInput) -> list[LettaMessage]:
        """A whole answer, from the agent's default history (where Letta answers whole turns)."""
        messages = await self._first(turn)
        events: list[LettaMessage] = []
        refused, round_ = False, _Round()
        for _ in range(MAX_ROUNDS):
            try:
                whole = await self._letta.send(turn.agent, messages, turn.client_tools)
            except ProxyError as error:
                if error.code != PENDING or refused or turn.results:
                    raise
                messages, refused = await self._moved_on(turn), True
                continue
            round_ = _Round()
            events += (event for event in whole.events() if not round_.hold(event))
            if not (own := self._deniable(round_, turn)):
                break
            messages = [deny(own, NO_APPROVER)]
        return events + ([round_.stop] if round_.stop else [])

    async def stream(
        self, turn: TurnInput, on_close: Callable[[], None]
    ) -> AsyncGenerator[LettaMessage, None]:
        """The answer as Letta's events, its first Letta stream already open (a refusal is still an HTTP
        error); `on_close` runs once, when the last of its streams is over."""
        chain = self._chain(turn, on_close)
        await anext(chain)
        return cast(AsyncGenerator[LettaMessage, None], chain)

    async def _chain(
        self, turn: TurnInput, on_close: Callable[[], None]
    ) -> AsyncGenerator[LettaMessage | None, None]:
        try:
            messages = await self._first(turn)
            refused, rounds = False, 0
            while True:
                try:
                    events = await self._letta.stream(
                        turn.agent, messages, _nothing, turn.conversation, turn.client_tools
                    )
                except ProxyError as error:
                    if error.code != PENDING or refused or turn.results:
                        raise
                    messages, refused = await self._moved_on(turn), True
                    continue
                if rounds == 0:
                    yield None  # open: the caller may answer
                rounds += 1
                round_ = _Round()
                try:
                    async with aclosing(events):
                        async for event in events:
                            if not round_.hold(event):
                                yield event
                except ProxyError:
                    if not (pending := await self._blocking(round_, turn, refused)):
                        if round_.stop:
                            yield round_.stop
                        raise
                    messages, refused = [deny(pending, MOVED_ON), *turn.messages], True
                    continue
                if not (own := self._deniable(round_, turn)) or rounds >= MAX_ROUNDS:
                    if round_.stop:
                        yield round_.stop
                    return
                messages = [deny(own, NO_APPROVER)]
        finally:
            on_close()

    async def _first(self, turn: TurnInput) -> list[Message]:
        """Tool results go first, answering every call the agent waits on; then the user's turns."""
        if not turn.results:
            return turn.messages
        pending = await self._pending(turn)
        return [answer(pending, turn.results, turn.client_names, self._mode), *turn.messages]

    async def _moved_on(self, turn: TurnInput) -> list[Message]:
        """The refused turn again, after a denial of what blocked it."""
        pending = await self._pending(turn)
        if not pending:  # Letta said it waits, but nothing is pending any more: let Letta say it again
            return turn.messages
        return [deny(pending, MOVED_ON), *turn.messages]

    async def _blocking(self, round_: _Round, turn: TurnInput, refused: bool) -> list[PendingCall]:
        """After a stream failed: the calls that made Letta refuse the turn, if that is why it failed.

        Letta's refusal is a failed stop and an error before anything else; other failures, and a lookup
        that fails too, leave the first error to be told.
        """
        failed = round_.stop is not None and round_.stop.stop_reason == "error"
        if not failed or round_.started or refused or turn.results:
            return []
        try:
            return await self._pending(turn)
        except ProxyError:
            return []

    async def _pending(self, turn: TurnInput) -> list[PendingCall]:
        return pending_calls(await self._letta.last_message(turn.agent, turn.conversation))

    def _deniable(self, round_: _Round, turn: TurnInput) -> list[PendingCall]:
        """The agent's own calls to deny at once: only in `deny` mode, and only when no client tool waits
        too (then the client answers first, and the rest is denied with its results)."""
        stopped = round_.stop is not None and round_.stop.stop_reason == "requires_approval"
        names = turn.client_names
        if not stopped or self._mode != "deny" or any(name in names for name in round_.calls.values()):
            return []
        return [PendingCall(call_id, name) for call_id, name in round_.calls.items()]


def _nothing() -> None:
    """Each Letta stream's own close hook: the answer's hook runs once, after the last of them."""
