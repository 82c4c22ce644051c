"""A turn's neutral deltas as a Responses API `response` and its stream events. Pure: no I/O.

The chat path turns Letta's events into `protocol.Delta`s (text, reasoning, tool-call fragments) with
one `TurnTranslator`; this encoder takes the same deltas, each with the id of the Letta message it came
from, so both APIs say the same thing of one turn. Items follow OpenAI's order: one is opened
(`output_item.added`), filled, and closed (`output_item.done`) before the next opens. Each Letta
assistant message is one `message` item (chat joins them with a blank line), each client tool call one
`function_call` item, each reasoning message one `reasoning` item (summary text).
"""

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from proxy.chat import protocol
from proxy.chat.encode import MESSAGE_SEPARATOR, TurnTranslator
from proxy.errors import ProxyError
from proxy.letta.wire import LettaMessage
from proxy.responses import protocol as wire
from proxy.responses.ids import item_id

INCOMPLETE = {"length": "max_output_tokens"}  # chat finish reasons that leave a response incomplete


@dataclass(frozen=True, slots=True)
class _Part:
    """How the one text part of a message (output_text) or of a reasoning item (summary_text) is told."""

    events: str  # the events' stem: response.<stem>_part.added, response.<text>.delta ...
    text: str
    index: str  # the event field that says which part
    make: type[wire.OutputText] | type[wire.SummaryText]
    logprobs: bool  # output text carries (empty) logprobs

    def fields(self, item: "_Item", **more: Any) -> dict[str, Any]:
        extra = {"logprobs": []} if self.logprobs and "part" not in more else {}
        return {"output_index": item.index, "item_id": item.id, self.index: 0, **extra, **more}


PARTS = {
    "message": _Part("content", "output_text", "content_index", wire.OutputText, logprobs=True),
    "reasoning": _Part(
        "reasoning_summary", "reasoning_summary_text", "summary_index", wire.SummaryText, False
    ),
}


@dataclass(frozen=True, slots=True)
class Header:
    """What the response repeats from its request, and its identity."""

    id: str
    created_at: int
    model: str
    previous_response_id: str | None = None
    instructions: str | None = None
    tools: tuple[Any, ...] = ()


@dataclass
class _Item:
    kind: str  # "message", "function_call" or "reasoning"
    id: str
    index: int
    text: list[str] = field(default_factory=list)
    source: str | None = None  # the Letta message it comes from
    call_id: str = ""
    name: str = ""


class ResponseEncoder:
    """Follows one turn: which item is open, what each holds, and the events' sequence numbers."""

    def __init__(self, header: Header) -> None:
        self.header = header
        self._items: list[_Item] = []
        self._calls: dict[int, _Item] = {}  # by the delta's tool-call index
        self._open: _Item | None = None
        self._sequence = 0
        self.result: wire.Response | None = None  # the whole response, once the turn is over

    def start(self) -> list[wire.Event]:
        """`response.created` then `response.in_progress`, both with the empty response."""
        response = self.response("in_progress")
        return [
            self._event("response.created", response=response),
            self._event("response.in_progress", response=response),
        ]

    def feed(self, delta: protocol.Delta, source: str | None) -> list[wire.Event]:
        """The events for one delta from the Letta message `source`."""
        events: list[wire.Event] = []
        if delta.reasoning_content:
            events += self._text("reasoning", delta.reasoning_content, source)
        if delta.content:
            events += self._text("message", delta.content, source)
        for call in delta.tool_calls or ():
            events += self._tool_call(call)
        return events

    def feed_turn(self, events: Iterable[LettaMessage], translator: TurnTranslator) -> None:
        """A whole turn's Letta messages, through the translator (a failed turn raises)."""
        for event in events:
            if (delta := translator.feed(event)) is not None:
                self.feed(delta, event.id)

    def finish(self, finish_reason: str, usage: protocol.Usage | None) -> list[wire.Event]:
        """The open item closed, then `response.completed` (status `incomplete` if the turn was cut)."""
        events = self._close()
        reason = INCOMPLETE.get(finish_reason)
        self.result = self.response("incomplete" if reason else "completed", usage, reason)
        return [*events, self._event("response.completed", response=self.result)]

    def fail(self, error: ProxyError) -> list[wire.Event]:
        """`response.failed`, with an error code Codex and the SDKs know, after the open item is closed."""
        events = self._close()
        failure = wire.ResponseError(code=failure_code(error), message=error.message)
        self.result = self.response("failed", error=failure)
        return [*events, self._event("response.failed", response=self.result)]

    def response(
        self,
        status: str,
        usage: protocol.Usage | None = None,
        incomplete: str | None = None,
        error: wire.ResponseError | None = None,
    ) -> wire.Response:
        header = self.header
        return wire.Response(
            id=header.id,
            created_at=header.created_at,
            model=header.model,
            status=status,  # type: ignore[arg-type]
            output=[self._snapshot(item, done=True) for item in self._items],
            usage=_usage(usage) if usage else None,
            error=error,
            incomplete_details=wire.IncompleteDetails(incomplete) if incomplete else None,
            previous_response_id=header.previous_response_id,
            instructions=header.instructions,
            tools=list(header.tools),
        )

    def _text(self, kind: str, text: str, source: str | None) -> list[wire.Event]:
        """Text for the open item of `kind`, or for a new one when another Letta message begins."""
        events: list[wire.Event] = []
        item = self._open
        if item is None or item.kind != kind or item.source != source:
            if kind == "message":
                text = text.removeprefix(MESSAGE_SEPARATOR)  # chat's separator; here items separate them
            events += self._close()
            item = self._start(kind, source)
            events += self._opened(item)
        item.text.append(text)
        part = PARTS[kind]
        events.append(self._event(f"response.{part.text}.delta", **part.fields(item, delta=text)))
        return events

    def _tool_call(self, call: protocol.ToolCallDelta) -> list[wire.Event]:
        """A call opens with its id and name; later fragments add to its arguments."""
        events: list[wire.Event] = []
        function = call.function or protocol.FunctionCallDelta()
        item = self._calls.get(call.index)
        if item is None or call.id is not None:
            events += self._close()
            item = self._start("function_call", call.id)
            item.call_id, item.name = call.id or "", function.name or ""
            self._calls[call.index] = item
            events += self._opened(item)
        if function.arguments:
            item.text.append(function.arguments)
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    output_index=item.index,
                    item_id=item.id,
                    delta=function.arguments,
                )
            )
        return events

    def _start(self, kind: str, source: str | None) -> _Item:
        index = len(self._items)
        prefix = {"message": "msg", "function_call": "fc", "reasoning": "rs"}[kind]
        ident = item_id(prefix, source) if source else f"{prefix}_{_derived(self.header.id, index)}"
        item = _Item(kind, ident, index, source=source)
        self._items.append(item)
        self._open = item
        return item

    def _opened(self, item: _Item) -> list[wire.Event]:
        events = [
            self._event("response.output_item.added", output_index=item.index, item=self._snapshot(item))
        ]
        if part := PARTS.get(item.kind):
            events.append(
                self._event(f"response.{part.events}_part.added", **part.fields(item, part=part.make("")))
            )
        return events

    def _close(self) -> list[wire.Event]:
        item, self._open = self._open, None
        if item is None:
            return []
        text = "".join(item.text)
        if part := PARTS.get(item.kind):
            events = [
                self._event(f"response.{part.text}.done", **part.fields(item, text=text)),
                self._event(f"response.{part.events}_part.done", **part.fields(item, part=part.make(text))),
            ]
        else:
            where = {"output_index": item.index, "item_id": item.id}
            events = [
                self._event("response.function_call_arguments.done", **where, arguments=text, name=item.name)
            ]
        done = self._event(
            "response.output_item.done", output_index=item.index, item=self._snapshot(item, done=True)
        )
        return [*events, done]

    def _snapshot(self, item: _Item, done: bool = False) -> wire.OutputItem:
        """The item as it stands: empty and in progress when added, whole and completed when done."""
        text = "".join(item.text) if done else ""
        status = "completed" if done else "in_progress"
        if item.kind == "message":
            return wire.MessageItem(item.id, status, [wire.OutputText(text)] if done else [])
        if item.kind == "reasoning":
            return wire.ReasoningItem(item.id, [wire.SummaryText(text)] if done else [])
        return wire.FunctionCallItem(item.id, item.call_id, item.name, text, status)

    def _event(self, kind: str, **fields: Any) -> wire.Event:
        event = wire.Event(type=kind, sequence_number=self._sequence, **fields)
        self._sequence += 1
        return event


def failure_code(error: ProxyError) -> str:
    """OpenAI's codes that Codex acts on: quota and rate limits stop it; anything else is a server error."""
    if error.code in ("insufficient_credits", "insufficient_quota") or error.status == 402:
        return "insufficient_quota"
    if error.status == 429:
        return "rate_limit_exceeded"
    return "server_error"


def _usage(usage: protocol.Usage) -> wire.Usage:
    return wire.Usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)


def _derived(response_id: str, index: int) -> str:
    """An item id for output with no Letta message behind it, stable for its response."""
    return hashlib.sha256(f"{response_id}:{index}".encode()).hexdigest()[:32]
