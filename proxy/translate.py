"""Pure translation between OpenAI and Letta, with no I/O.

Requests: the new user turns of an OpenAI request become Letta user messages. Answers: Letta messages,
whether streamed event by event or returned whole, go through one `TurnTranslator`, which turns each
into an OpenAI delta; a whole answer is those deltas merged. So a streamed turn and a non-streamed one
can never disagree.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

from letta_client.types import MessageCreateParam

from proxy import protocol
from proxy.errors import bad_request, upstream_failure
from proxy.letta.wire import LettaMessage, ToolCall
from proxy.settings import ApprovalMode, SystemMessages, ToolCallMode

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
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


# --- OpenAI request -> Letta messages -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one request may carry, beyond the body size the server enforces."""

    messages: int = 5000
    text_chars: int = 1_000_000
    image_bytes: int = 5 * 1024 * 1024
    image_url_hosts: frozenset[str] = frozenset()  # hosts Letta may fetch images from; none: data URLs only
    system_messages: SystemMessages = "drop"


def letta_messages(
    request: protocol.ChatCompletionRequest, limits: Limits = Limits(), *, results_given: bool = False
) -> list[MessageCreateParam]:
    """The user turns after the last assistant message: the only part Letta has not seen yet.

    There may be none when the request brings tool results (`results_given`), which are new too.
    """
    if request.n is not None and request.n > 1:
        raise bad_request("Only n=1 is supported: a Letta agent gives one answer per turn.", param="n")
    if len(request.messages) > limits.messages:
        raise bad_request(
            f"Too many messages: {len(request.messages)}, at most {limits.messages} are accepted.",
            param="messages",
            code="too_many_messages",
        )
    last_assistant = max((i for i, m in enumerate(request.messages) if m.role == "assistant"), default=-1)
    turns: list[MessageCreateParam] = [
        _user_turn(i, message, limits, request.user)
        for i, message in enumerate(request.messages)
        if i > last_assistant and message.role == "user"
    ]
    if not turns and not results_given:
        raise bad_request(
            "No user message after the last assistant message: there is nothing new to send to the agent.",
            param="messages",
        )
    if limits.system_messages == "forward" and turns:
        system = [
            _system_text(i, message)
            for i, message in enumerate(request.messages)
            if i > last_assistant and message.role in ("system", "developer")
        ]
        turns[0] = with_system_block(turns[0], system)
    if sum(text_length(turn["content"]) for turn in turns) > limits.text_chars:
        raise bad_request(
            f"The new user messages hold more than {limits.text_chars} characters of text.",
            param="messages",
            code="message_too_long",
        )
    return turns


def _user_turn(
    index: int, message: protocol.ChatMessage, limits: Limits, user: str | None
) -> MessageCreateParam:
    """A Letta user message; the speaker's name (the message's, else the request's `user`) goes with it."""
    turn: MessageCreateParam = {"role": "user", "content": _user_content(index, message, limits)}
    if name := sender_name(message.name or user):
        turn["name"] = name
    return turn


def sender_name(name: str | None) -> str | None:
    """A name every LLM provider behind Letta accepts: letters, digits, `_` and `-`, at most 64."""
    cleaned = _NAME_UNSAFE.sub("_", name or "").strip("_")[:64]
    return cleaned or None


def _system_text(index: int, message: protocol.ChatMessage) -> str:
    content = message.content
    if isinstance(content, str) or content is None:
        return content or ""
    if any(part.type != "text" for part in content):
        raise bad_request(
            f"messages[{index}] is a {message.role} message with non-text parts: only text can be forwarded.",
            param=f"messages[{index}].content",
        )
    return "\n".join(part.text or "" for part in content)


SYSTEM_BLOCK = "[System instructions from the client]\n{text}\n[End of the client's system instructions]"


def with_system_block(turn: MessageCreateParam, texts: Iterable[str]) -> MessageCreateParam:
    """The client's system text as a marked block before the user text (PROXY_SYSTEM_MESSAGES=forward)."""
    text = "\n\n".join(t for t in texts if t.strip())
    if not text:
        return turn
    block = SYSTEM_BLOCK.format(text=text)
    content = turn["content"]
    if isinstance(content, str):
        return {**turn, "content": f"{block}\n\n{content}"}
    return {**turn, "content": [{"type": "text", "text": block}, *cast(list[Any], content)]}


def text_length(content: object) -> int:
    if isinstance(content, str):
        return len(content)
    return sum(len(part.get("text", "")) for part in cast(list[dict[str, Any]], content))


def _user_content(index: int, message: protocol.ChatMessage, limits: Limits) -> str | list[Any]:
    """A plain string when the turn is only text (what Letta shows best), else Letta content parts."""
    content = message.content
    if isinstance(content, str) or content is None:
        text = content or ""
        if not text.strip():
            raise bad_request(f"messages[{index}] has empty content.", param=f"messages[{index}].content")
        return text
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        where = f"messages[{index}].content[{j}]"
        if part.type == "text" and part.text is not None:
            if parts and parts[-1]["type"] == "text":
                parts[-1]["text"] += "\n" + part.text
            else:
                parts.append({"type": "text", "text": part.text})
        elif part.type == "image_url" and part.image_url is not None:
            parts.append(image_part(part.image_url.url, f"{where}.image_url.url", limits))
        else:
            raise bad_request(
                f"Unsupported content part of type '{part.type}' in {where}: send text or image_url parts.",
                param=f"{where}.type",
            )
    if not parts:
        raise bad_request(f"messages[{index}] has empty content.", param=f"messages[{index}].content")
    if len(parts) == 1 and parts[0]["type"] == "text":
        return cast(str, parts[0]["text"])
    return parts


def image_part(url: str, param: str, limits: Limits) -> dict[str, Any]:
    """A Letta image: a base64 data URL, or an http(s) URL on an allowed host, which Letta fetches itself.

    Letta would fetch whatever URL a client names, so remote images are refused unless their host is one
    the deployment listed (PROXY_IMAGE_URL_HOSTS).
    """
    if url.startswith(("http://", "https://")) and _allowed_host(url, limits.image_url_hosts):
        return {"type": "image", "source": {"type": "url", "url": url}}
    header, comma, data = url.partition(",")
    media_type, _, encoding = header.removeprefix("data:").partition(";")
    if not (url.startswith("data:") and comma and encoding == "base64" and media_type.startswith("image/")):
        allowed = " or http(s) URLs on the hosts the proxy allows" if limits.image_url_hosts else ""
        raise bad_request(
            f"Unsupported image URL in {param}: "
            f"only base64 data URLs (data:image/...;base64,...){allowed} are accepted.",
            param=param,
        )
    if len(data) * 3 // 4 > limits.image_bytes:
        raise bad_request(
            f"The image in {param} is larger than {limits.image_bytes} bytes.",
            param=param,
            code="image_too_large",
        )
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _allowed_host(url: str, hosts: frozenset[str]) -> bool:
    """Exact host names only, and no credentials in the URL (they would reach Letta's fetch)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.username is None and (parts.hostname or "") in hosts


# --- Letta messages and events -> OpenAI deltas ---------------------------------------------------


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
    events: list[LettaMessage], translator: TurnTranslator, completion_id: str, created: int, model: str
) -> protocol.ChatCompletion:
    """A whole Letta turn as one `chat.completion`, built from the same deltas a stream would send."""
    deltas = [delta for event in events if (delta := translator.feed(event)) is not None]
    choice = protocol.Choice(message=merge(deltas), finish_reason=translator.finish_reason)
    return protocol.ChatCompletion(completion_id, created, model, [choice], usage=translator.usage)


def local_completion(text: str, completion_id: str, created: int, model: str) -> protocol.ChatCompletion:
    """An answer the proxy gives itself, with no agent involved (so no tokens counted)."""
    choice = protocol.Choice(message=protocol.AssistantMessage(content=text), finish_reason="stop")
    return protocol.ChatCompletion(completion_id, created, model, [choice], usage=protocol.Usage(0, 0, 0))
