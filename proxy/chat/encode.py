"""Pure translation of Letta's answer into chat completions, with no I/O.

Letta messages, whether streamed event by event or returned whole, go through one `TurnTranslator`, which
turns each into an OpenAI delta; a whole answer is those deltas merged. So a streamed turn and a
non-streamed one can never disagree.
"""

from dataclasses import dataclass, field

from proxy.chat import protocol
from proxy.errors import upstream_failure
from proxy.letta.wire import LettaMessage, ToolCall
from proxy.settings import ApprovalMode, ToolCallMode

FINISH_REASONS = {
    "end_turn": "stop",
    "no_tool_call": "stop",
    "tool_rule": "stop",
    "cancelled": "stop",
    "requires_approval": "stop",
    "max_steps": "length",
    "max_tokens_exceeded": "length",
    "context_window_overflow_in_system_prompt": "length",
}
ERROR_STOP_REASONS = frozenset(
    {"error", "llm_api_error", "invalid_llm_response", "invalid_tool_call", "insufficient_credits"}
)
APPROVAL_NOTE = "[The agent is waiting for approval of a tool call. Approve or deny it in Letta to continue.]"
MESSAGE_SEPARATOR = "\n\n"


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    """What one completion repeats in every chunk, and in its whole answer: its id, time and model."""

    id: str
    created: int
    model: str

    def chunk(self, delta: protocol.Delta, finish_reason: str | None = None) -> protocol.ChatCompletionChunk:
        choice = protocol.ChunkChoice(delta=delta, finish_reason=finish_reason)
        return protocol.ChatCompletionChunk(self.id, self.created, self.model, [choice])

    def usage(self, usage: protocol.Usage) -> protocol.ChatCompletionChunk:
        return protocol.ChatCompletionChunk(self.id, self.created, self.model, [], usage=usage)


@dataclass
class TurnTranslator:
    """Follows one agent turn: which tool call has which index, where one message ends, how it stopped.

    The agent's own tool calls (Letta ran them) are shown per `tool_calls`, never as OpenAI tool_calls
    once the client offers tools of its own; calls the agent waits on (`approval_request_message`) for a
    client tool, or for any tool in `client` approval mode, are OpenAI tool_calls the client must answer.
    """

    tool_calls: ToolCallMode = "reasoning"
    reasoning: bool = False
    client_tools: frozenset[str] = frozenset()
    approvals: ApprovalMode = "deny"
    stop_reason: str | None = None
    usage: protocol.Usage | None = None
    _tool_index: dict[str, int] = field(default_factory=dict)
    _shown_as: dict[str, str] = field(default_factory=dict)  # call id -> "client" or a ToolCallMode
    _current_tool: str | None = None
    _assistant_id: str | None = None
    _wrote_content: bool = False
    _wrote_reasoning: bool = False

    def __post_init__(self) -> None:
        if self.client_tools and self.tool_calls == "openai":
            self.tool_calls = "reasoning"  # a client that offers tools would try to run the agent's own

    def feed(self, event: LettaMessage) -> protocol.Delta | None:
        """The delta for one Letta message or stream event; None for what the client never sees."""
        match event.message_type:
            case "assistant_message":
                return self._assistant(event)
            case "tool_call_message":
                return self._tool_call(event, waiting=False)
            case "approval_request_message":
                return self._tool_call(event, waiting=True)
            case "reasoning_message" if self.reasoning:
                return self._reasoning_text(event.reasoning or "")
            case "stop_reason":
                return self.stop(event.stop_reason or "end_turn")
            case "usage_statistics":
                self.count(event)
            case "error_message":
                raise event.failure()
        return None

    def stop(self, reason: str) -> protocol.Delta | None:
        """Records why the turn ended; a failed turn is an error, a wait the client cannot answer is said."""
        self.stop_reason = reason
        if reason in ERROR_STOP_REASONS:
            raise upstream_failure(f"The agent's turn failed in Letta (stop reason '{reason}').", code=reason)
        if reason == "requires_approval" and not self.calls_client:
            return self._content(None, APPROVAL_NOTE)
        return None

    def count(self, usage: LettaMessage) -> None:
        """Letta's own token counts, summed over the Letta requests of one answer; total derived if absent."""
        prompt = usage.prompt_tokens or 0
        completion = usage.completion_tokens or 0
        total = usage.total_tokens or prompt + completion
        if self.usage is not None:
            prompt, completion, total = (
                prompt + self.usage.prompt_tokens,
                completion + self.usage.completion_tokens,
                total + self.usage.total_tokens,
            )
        self.usage = protocol.Usage(prompt, completion, total)

    @property
    def calls_client(self) -> bool:
        """Whether the answer asks the client to run tools (or approve them): finish_reason tool_calls."""
        return "client" in self._shown_as.values()

    @property
    def finish_reason(self) -> str:
        if self.stop_reason == "requires_approval" and self.calls_client:
            return "tool_calls"
        return FINISH_REASONS.get(self.stop_reason or "end_turn", "stop")

    def _assistant(self, message: LettaMessage) -> protocol.Delta | None:
        content = message.content
        text = content if isinstance(content, str) else "".join(part.text or "" for part in content or ())
        return self._content(message.id, text)

    def _content(self, message_id: str | None, text: str) -> protocol.Delta | None:
        """Separates consecutive assistant messages with a blank line, in a stream as in a whole answer."""
        if not text:
            return None
        if self._wrote_content and message_id != self._assistant_id:
            text = MESSAGE_SEPARATOR + text
        self._assistant_id = message_id
        self._wrote_content = True
        return protocol.Delta(content=text)

    def _reasoning_text(self, text: str) -> protocol.Delta | None:
        if not text:
            return None
        self._wrote_reasoning = True
        return protocol.Delta(reasoning_content=text)

    def _tool_call(self, message: LettaMessage, *, waiting: bool) -> protocol.Delta | None:
        calls = message.tool_calls if isinstance(message.tool_calls, list) else [message.tool_call]
        client: list[protocol.ToolCallDelta] = []
        text: list[str] = []
        for call in calls:
            if call is None or (call_id := call.tool_call_id or self._current_tool) is None:
                continue
            self._current_tool = call_id
            opening = call_id not in self._shown_as
            if opening:
                self._shown_as[call_id] = self._presentation(call.name, waiting)
            shown_as = self._shown_as[call_id]
            if shown_as in ("client", "openai"):
                if delta := self._tool_call_delta(call_id, call, opening):
                    client.append(delta)
            elif shown_as == "reasoning":
                text.append(self._as_text(call, opening))
        reasoning = "".join(text)
        if client:  # one message may hold a client's call and an own call shown as reasoning
            self._wrote_reasoning = self._wrote_reasoning or bool(reasoning)
            return protocol.Delta(tool_calls=client, reasoning_content=reasoning or None)
        return self._reasoning_text(reasoning)

    def _presentation(self, name: str | None, waiting: bool) -> str:
        if waiting and (self.approvals == "client" or name in self.client_tools):
            return "client"
        return self.tool_calls

    def _tool_call_delta(self, call_id: str, call: ToolCall, opening: bool) -> protocol.ToolCallDelta | None:
        """The first fragment of a call opens it (id, name); later fragments only add arguments."""
        if not opening:
            if not call.arguments:
                return None
            return protocol.ToolCallDelta(
                index=self._tool_index[call_id], function=protocol.FunctionCallDelta(arguments=call.arguments)
            )
        index = self._tool_index[call_id] = len(self._tool_index)
        return protocol.ToolCallDelta(
            index=index,
            id=call_id,
            type="function",
            function=protocol.FunctionCallDelta(name=call.name or "", arguments=call.arguments or ""),
        )

    def _as_text(self, call: ToolCall, opening: bool) -> str:
        """A tool call as readable reasoning text, for UIs that would try to run real tool_calls."""
        if not opening:
            return call.arguments or ""
        header = f"Tool call {call.name or ''}: {call.arguments or ''}"
        return "\n" + header if self._wrote_reasoning else header


def merge(deltas: list[protocol.Delta]) -> protocol.AssistantMessage:
    """A whole assistant message from the deltas of a turn: text joined, tool-call fragments joined."""
    content = "".join(delta.content for delta in deltas if delta.content)
    reasoning = "".join(delta.reasoning_content for delta in deltas if delta.reasoning_content)
    calls: dict[int, tuple[str, str, list[str]]] = {}
    for delta in deltas:
        for call in delta.tool_calls or ():
            function = call.function or protocol.FunctionCallDelta()
            if call.id is not None:
                calls[call.index] = (call.id, function.name or "", [])
            calls[call.index][2].append(function.arguments or "")
    tool_calls = [
        protocol.ToolCall(id=call_id, function=protocol.FunctionCall(name=name, arguments="".join(arguments)))
        for call_id, name, arguments in calls.values()
    ]
    return protocol.AssistantMessage(
        content=content or (None if tool_calls else ""),
        tool_calls=tool_calls or None,
        reasoning_content=reasoning or None,
    )


def completion(
    events: list[LettaMessage], translator: TurnTranslator, header: ChunkHeader
) -> protocol.ChatCompletion:
    """A whole Letta turn as one `chat.completion`, built from the same deltas a stream would send."""
    deltas = [delta for event in events if (delta := translator.feed(event)) is not None]
    choice = protocol.Choice(message=merge(deltas), finish_reason=translator.finish_reason)
    return protocol.ChatCompletion(header.id, header.created, header.model, [choice], usage=translator.usage)


def local_completion(text: str, header: ChunkHeader) -> protocol.ChatCompletion:
    """An answer the proxy gives itself, with no agent involved (so no tokens counted)."""
    choice = protocol.Choice(message=protocol.AssistantMessage(content=text), finish_reason="stop")
    return protocol.ChatCompletion(
        header.id, header.created, header.model, [choice], usage=protocol.Usage(0, 0, 0)
    )
