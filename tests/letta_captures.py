"""Real Letta wire captures (tests/fixtures, from ../shared/letta-server/captures): data and SDK objects."""

import json
from copy import deepcopy
from pathlib import Path
from typing import Any

from letta_client.types.agents import LettaResponse
from letta_client.types.agents.letta_streaming_response import LettaStreamingResponse
from pydantic import TypeAdapter

FIXTURES = Path(__file__).parent / "fixtures"
_event = TypeAdapter(LettaStreamingResponse)


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def wire(name: str) -> Any:
    """A JSON capture as plain data."""
    return json.loads(raw(name))


def sse_data(name: str) -> list[dict[str, Any]]:
    """The JSON events of an SSE capture, in order, without the closing `[DONE]`."""
    return [json.loads(line[6:]) for line in raw(name).decode().splitlines() if line.startswith("data: {")]


def event(data: dict[str, Any], **changes: Any) -> Any:
    """One stream event as letta-client parses it, optionally with some fields changed."""
    return _event.validate_python({**deepcopy(data), **changes})


def events(name: str) -> list[Any]:
    return [event(data) for data in sse_data(name)]


def response(name: str) -> LettaResponse:
    return LettaResponse.model_validate(wire(name))


def first(name: str, message_type: str) -> dict[str, Any]:
    """The first event of a given type in an SSE capture, as plain data to build edge cases from."""
    return next(data for data in sse_data(name) if data.get("message_type") == message_type)
