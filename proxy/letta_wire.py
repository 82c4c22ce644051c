"""Letta's answers as bytes on the wire, decoded by msgspec into only the fields the proxy reads.

The SDK's pydantic models validate every field of every event; these structs skip what nobody reads, at
a fraction of the CPU (bench/README.md). One permissive struct serves every message type, because Letta
adds types and fields over time: an unknown one must pass as something the translator ignores, not
fail the turn. Pure: no I/O.
"""

from collections.abc import Iterator
from datetime import datetime

import msgspec

from proxy.errors import ProxyError, upstream_failure

MAX_EVENT_BYTES = 16 * 1024 * 1024  # one SSE line; a stream that never ends its line is not Letta
MAX_UPSTREAM_MESSAGE = 300  # characters of Letta's own error text passed on


class TextPart(msgspec.Struct):
    text: str | None = None


class ToolCall(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None
    tool_call_id: str | None = None


class LettaMessage(msgspec.Struct, kw_only=True):
    """Any Letta message or stream event: assistant text, reasoning, tool call, stop reason, usage, error."""

    message_type: str = ""
    id: str | None = None
    run_id: str | None = None
    content: str | list[TextPart] | None = None
    reasoning: str | None = None
    tool_call: ToolCall | None = None
    tool_calls: list[ToolCall] | ToolCall | None = None
    stop_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    error_type: str | None = None
    message: str | None = None
    detail: str | None = None
    error: object = None  # Letta's bare `{"error": ..., "code": ...}` for a failure it did not classify

    def failure(self) -> ProxyError:
        """Letta's report of a failed turn (an `error_message`, or any `event: error`) as a 502."""
        kind = f" ({self.error_type})" if self.error_type else ""
        text = f"Letta reported an error during the turn{kind}: {self.message or self.error or self.detail}"
        short = text if len(text) <= MAX_UPSTREAM_MESSAGE else text[:MAX_UPSTREAM_MESSAGE] + "…"
        return upstream_failure(short, code=self.error_type or "upstream_error")


class LettaTurn(msgspec.Struct):
    """A whole turn: what `POST /v1/agents/{id}/messages` answers without streaming."""

    messages: list[LettaMessage] = []
    stop_reason: LettaMessage | None = None
    usage: LettaMessage | None = None

    def events(self) -> list[LettaMessage]:
        """The turn as the events a stream of it would carry, so one translator serves both."""
        return [*self.messages, *(event for event in (self.stop_reason, self.usage) if event is not None)]


class AgentRecord(msgspec.Struct):
    """What the proxy needs of an agent; Letta's agent state is far larger."""

    id: str
    name: str
    created_at: datetime | None = None
    agent_type: str | None = None


class RunRecord(msgspec.Struct):
    """What the proxy reads of a Letta run: a turn, whose messages and usage Letta keeps."""

    id: str
    agent_id: str | None = None
    conversation_id: str | None = None
    status: str | None = None
    stop_reason: str | None = None
    created_at: datetime | None = None


_turn = msgspec.json.Decoder(LettaTurn)
_message = msgspec.json.Decoder(LettaMessage)
_agents = msgspec.json.Decoder(list[AgentRecord])
_messages = msgspec.json.Decoder(list[LettaMessage])


def decode_run(body: bytes) -> RunRecord:
    try:
        return msgspec.json.decode(body, type=RunRecord)
    except msgspec.DecodeError as exc:
        raise upstream_failure("The Letta server sent a malformed run.") from exc


def decode_usage(body: bytes) -> LettaMessage:
    """A run's token counts, in the fields a usage_statistics event has."""
    try:
        return _message.decode(body)
    except msgspec.DecodeError as exc:
        raise upstream_failure("The Letta server sent a malformed usage.") from exc


def decode_turn(body: bytes) -> LettaTurn:
    try:
        return _turn.decode(body)
    except msgspec.DecodeError as exc:
        raise upstream_failure("The Letta server sent a malformed answer.") from exc


def decode_agents(body: bytes) -> list[AgentRecord]:
    try:
        return _agents.decode(body)
    except msgspec.DecodeError as exc:
        raise ProxyError(
            502, "The Letta server sent a malformed agent list.", type="server_error", code="upstream_error"
        ) from exc


def decode_messages(body: bytes) -> list[LettaMessage]:
    try:
        return _messages.decode(body)
    except msgspec.DecodeError as exc:
        raise upstream_failure("The Letta server sent a malformed message list.") from exc


class SSEDecoder:
    """Letta's SSE bytes to messages, whatever the chunk boundaries; `done` once `[DONE]` has come.

    An `event: error` frame raises, whichever of Letta's error shapes it holds: the turn has failed.
    """

    def __init__(self) -> None:
        self._partial = b""
        self._event = b""
        self.done = False

    def feed(self, chunk: bytes) -> Iterator[LettaMessage]:
        """The chunk's messages one by one, so that those before a malformed one still get through."""
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        if len(self._partial) > MAX_EVENT_BYTES:
            raise upstream_failure("The Letta server sent an event larger than the proxy accepts.")
        for line in lines:
            if line.startswith(b"data:"):
                data = line[5:].strip()
                if data == b"[DONE]":
                    self.done = True
                    return
                yield self._decode(data)
            elif line.startswith(b"event:"):
                self._event = line[6:].strip()
            elif not line.strip():
                self._event = b""

    def _decode(self, data: bytes) -> LettaMessage:
        try:
            message = _message.decode(data)
        except msgspec.DecodeError as exc:
            raise upstream_failure("The Letta server sent a malformed stream event.") from exc
        if self._event == b"error":
            raise message.failure()
        return message
