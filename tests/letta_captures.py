"""Real Letta wire captures (tests/fixtures, from ../shared/letta-server/captures): as data, and as the
proxy decodes them."""

import json
from copy import deepcopy
from pathlib import Path
from typing import Any

import msgspec

from proxy.letta.wire import LettaMessage, SSEDecoder, decode_turn

FIXTURES = Path(__file__).parent / "fixtures"


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def wire(name: str) -> Any:
    """A JSON capture as plain data."""
    return json.loads(raw(name))


def sse_data(name: str) -> list[dict[str, Any]]:
    """The JSON events of an SSE capture, in order, without the closing `[DONE]`."""
    return [json.loads(line[6:]) for line in raw(name).decode().splitlines() if line.startswith("data: {")]


def event(data: dict[str, Any], **changes: Any) -> LettaMessage:
    """One stream event as the proxy decodes it, optionally with some fields changed."""
    return msgspec.json.decode(json.dumps({**deepcopy(data), **changes}), type=LettaMessage)


def events(name: str) -> list[LettaMessage]:
    """An SSE capture's events, through the proxy's own stream decoder."""
    return list(SSEDecoder().feed(raw(name)))


def turn(name: str) -> list[LettaMessage]:
    """A whole-turn capture's messages, stop reason and usage, as the proxy decodes them."""
    return decode_turn(raw(name)).events()


def first(name: str, message_type: str) -> dict[str, Any]:
    """The first event of a given type in an SSE capture, as plain data to build edge cases from."""
    return next(data for data in sse_data(name) if data.get("message_type") == message_type)
