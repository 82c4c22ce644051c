"""Letta's answers as bytes on the wire, decoded by msgspec into only the fields the proxy reads.

The SDK's pydantic models validate every field of every event; these structs skip what nobody reads, at
a fraction of the CPU (bench/README.md). One permissive struct serves every message type, because Letta
adds types and fields over time: an unknown one must pass as something the translator ignores, not
fail the turn. Pure: no I/O. The SDK's request types (`Message`, `ClientTool`, `MessageCreateParam`) are
named here too, so that no module outside this package imports letta-client.
"""

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import msgspec
from letta_client.types import MessageCreateParam as MessageCreateParam
from letta_client.types.agents.message_create_params import ClientTool as ClientTool
from letta_client.types.agents.message_create_params import Message as Message

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
        said = self.message or error_text(self.error) or self.detail
        text = f"Letta reported an error during the turn{kind}: {said}"
        short = text if len(text) <= MAX_UPSTREAM_MESSAGE else text[:MAX_UPSTREAM_MESSAGE] + "…"
        return upstream_failure(short, code=self.error_type or "upstream_error")


class LettaResponse(msgspec.Struct):
    """A whole turn's answer: what `POST /v1/agents/{id}/messages` answers without streaming (Letta's
    own name for it)."""

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
    tags: list[str] = []


class RunRecord(msgspec.Struct):
    """What the proxy reads of a Letta run: a turn, whose messages and usage Letta keeps."""

    id: str
    agent_id: str | None = None
    conversation_id: str | None = None
    status: str | None = None
    stop_reason: str | None = None
    created_at: datetime | None = None


def redact(text: str, secret: str | None) -> str:
    """`text` with our Letta token cut out, should Letta echo it back."""
    return text.replace(secret, "[redacted]") if secret else text


def error_text(detail: object) -> str:
    """Letta's error detail as readable text, whatever its shape: a string as is, FastAPI's validation
    list as `where: what` items, a dict by its message. Never a Python repr, never the echoed `input`."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        return "; ".join(text for item in detail if (text := error_text(item)))
    if isinstance(detail, dict):
        if isinstance(detail.get("msg"), str):  # one FastAPI validation error
            where = ".".join(str(part) for part in detail.get("loc") or ())
            return f"{where}: {detail['msg']}" if where else detail["msg"]
        for key in ("message", "detail", "error"):
            if text := error_text(detail.get(key)):
                return text
        return ""
    return "" if detail is None else str(detail)


def _scrubbed(message: LettaMessage, secret: str | None) -> LettaMessage:
    """An error event whose texts can be passed on: as text, without our Letta token."""
    if message.message_type != "error_message" and message.error is None and message.detail is None:
        return message
    return msgspec.structs.replace(
        message,
        message=redact(message.message, secret) if message.message else message.message,
        detail=redact(message.detail, secret) if message.detail else message.detail,
        error=redact(error_text(message.error), secret) if message.error is not None else None,
    )


_turn = msgspec.json.Decoder(LettaResponse)
_message = msgspec.json.Decoder(LettaMessage)
_agents = msgspec.json.Decoder(list[AgentRecord])
_messages = msgspec.json.Decoder(list[LettaMessage])
_state = msgspec.json.Decoder(dict[str, Any])


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


def decode_turn(body: bytes, secret: str | None = None) -> LettaResponse:
    """A whole turn; one without a stop reason is incomplete, as a stream without one would be."""
    try:
        turn = _turn.decode(body)
    except msgspec.DecodeError as exc:
        raise upstream_failure("The Letta server sent a malformed answer.") from exc
    if turn.stop_reason is None:
        raise upstream_failure(
            "The Letta server answered the turn without a stop reason.", code="upstream_incomplete"
        )
    turn.messages = [_scrubbed(message, secret) for message in turn.messages]
    return turn


def decode_agents(body: bytes) -> list[AgentRecord]:
    try:
        return _agents.decode(body)
    except msgspec.DecodeError as exc:
        raise _malformed("agent list") from exc


def decode_state(body: bytes) -> dict[str, Any]:
    """An agent's whole state as plain data: its nested configs are sent back to Letta as they came, so
    none of their fields is lost in a struct that does not know it."""
    try:
        return _state.decode(body)
    except msgspec.DecodeError as exc:
        raise _malformed("agent") from exc


def _malformed(what: str) -> ProxyError:
    """Letta's answer to a question about agents cannot be read: retrying is safe, no turn was sent."""
    return ProxyError(
        502, f"The Letta server sent a malformed {what}.", type="server_error", code="upstream_error"
    )


def decode_messages(body: bytes) -> list[LettaMessage]:
    try:
        return _messages.decode(body)
    except msgspec.DecodeError as exc:
        raise upstream_failure("The Letta server sent a malformed message list.") from exc


class SSEDecoder:
    """Letta's SSE bytes to messages, whatever the chunk boundaries; `done` once `[DONE]` has come.

    An `event: error` frame raises, whichever of Letta's error shapes it holds: the turn has failed.
    A line's pieces are kept apart until its end comes, so a long line costs its length, not its square.
    """

    def __init__(self, secret: str | None = None) -> None:
        self._secret = secret
        self._pieces: list[bytes] = []  # the unfinished line
        self._size = 0
        self._event = b""
        self.done = False

    def feed(self, chunk: bytes) -> Iterator[LettaMessage]:
        """The chunk's messages one by one, so that those before a malformed one still get through."""
        lines: list[bytes] = []
        if b"\n" in chunk:
            *lines, partial = b"".join((*self._pieces, chunk)).split(b"\n")
            self._pieces, self._size = [partial], len(partial)
        else:
            self._pieces.append(chunk)
            self._size += len(chunk)
        if self._size > MAX_EVENT_BYTES:
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
        message = _scrubbed(message, self._secret)
        if self._event == b"error":
            raise message.failure()
        return message
