"""A fault-injecting fake Letta on 127.0.0.1: one agent per fault, answering with real captured wire data.

A raw asyncio HTTP/1.1 server, so that it can misbehave in ways a framework would not allow: hang
without answering, cut a chunked body mid-event, send garbage. It counts the requests still being
handled, so a test can tell whether the proxy left an upstream request open.
"""

import asyncio
import json
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from tests.letta_captures import raw, sse_data, wire

SYNC = wire("send_message.json")
STREAM = sse_data("stream_tokens.sse")
STATUSES = (401, 404, 409, 422, 429, 500, 503)
STOP_REASONS = ("error", "max_steps", "requires_approval")
# Letta's refusals as Letta 0.16.8 words them (letta/errors.py, server/rest_api/app.py), and Letta Cloud's
# quota refusal: status, body, headers.
REFUSALS: dict[str, tuple[int, dict[str, Any], dict[str, str]]] = {
    "busy": (
        409,
        {
            "detail": "CONFLICT: Cannot send a new message: Another request (run_id=run-busy) is currently "
            "being processed for this conversation. Please wait for it to complete.",
            "run_id": "run-busy",
        },
        {},
    ),
    "no-credits": (
        402,
        {
            "error": {
                "type": "llm_insufficient_credits",
                "message": "Insufficient credits for LLM request. Please check your account.",
                "detail": "PAYMENT_REQUIRED: out of credits",
            }
        },
        {},
    ),
    "quota": (429, {"message": "You have reached your plan's limit.", "reasons": ["premium-usage"]}, {}),
    "rate-limited": (
        429,
        {
            "error": {
                "type": "llm_rate_limit",
                "message": "Rate limit exceeded for LLM model provider. Please wait before making another "
                "request.",
                "detail": "RATE_LIMIT_EXCEEDED",
            }
        },
        {"retry-after": "30"},
    ),
}
SCENARIOS = (
    "ok",
    "hang",
    "invalid-json",
    "cut-stream",
    "garbage-stream",
    "endless-stream",
    "slow-stream",
    "error-event",
    "drip",
    "drip-event",
    "pinging",
    "empty-turn",
    "html-stream",
    "huge",
    "huge-chunked",
    "leak",
    "leak-event",
    *REFUSALS,
    *(f"status-{code}" for code in STATUSES),
    *(f"stop-{reason}" for reason in STOP_REASONS),
)
SLOW_GAP = 0.25  # seconds between events of the slow stream
DRIP_GAP = 0.1  # seconds between the bytes of a dripping answer, well inside any read timeout
HUGE = 4 * 1024 * 1024  # bytes of the huge answers

Writer = Callable[[bytes], Awaitable[None]]


def agents() -> list[dict[str, Any]]:
    template = wire("list_agents.json")[0]
    return [{**template, "id": f"agent-{name}", "name": name} for name in SCENARIOS]


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def _with_stop(reason: str) -> list[dict[str, Any]]:
    return [{**e, "stop_reason": reason} if e.get("message_type") == "stop_reason" else e for e in STREAM]


class FaultLetta:
    """Runs in its own thread and event loop; `url` is where the proxy should point."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.connections = 0
        self.requests: list[str] = []
        self.listing = "ok"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FaultLetta":
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await self._request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.connections -= 1
            writer.close()

    async def _request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Handles one request; False when the connection is to be closed."""
        head = await reader.readuntil(b"\r\n\r\n")
        method, path, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        body = json.loads(await reader.readexactly(int(length.group(1)))) if length else {}
        self.requests.append(f"{method} {path}")
        token = re.search(rb"(?i)authorization: *bearer +(\S+)", head)
        secret = token.group(1).decode() if token else ""
        self.in_flight += 1
        try:
            return await self._answer(method, path, body, secret, reader, writer)
        finally:
            self.in_flight -= 1

    async def _answer(
        self,
        method: str,
        path: str,
        body: dict[str, Any],
        secret: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        if path.startswith("/v1/agents/?") or path == "/v1/agents/":
            return await self._agents(path, reader, writer)
        if path == "/v1/health/":
            return await _json(writer, 200, {"status": "ok", "version": "fault"})
        match = re.fullmatch(r"/v1/agents/agent-([\w-]+)/messages(/cancel)?", path)
        if method != "POST" or match is None:
            return await _json(writer, 404, {"detail": "Not Found"})
        scenario, cancel = match.groups()
        if cancel:
            return await _json(writer, 200, {})
        if scenario == "hang":
            await reader.read()  # until the proxy gives up and closes the connection
            return False
        if scenario.startswith("status-"):
            return await _json(writer, int(scenario[7:]), {"detail": f"fault {scenario}"})
        if scenario in REFUSALS:
            status, payload, headers = REFUSALS[scenario]
            return await _json(writer, status, payload, headers)
        if scenario == "leak":  # Letta echoing our token and the user's words in its error
            return await _json(writer, 500, {"detail": f"token {secret} refused for {body['messages']}"})
        if scenario == "invalid-json":
            return await _send(writer, 200, "application/json", b"{not json")
        if scenario == "html-stream":
            return await _send(writer, 200, "text/html", b"<html>Bad gateway</html>")
        if scenario.startswith("huge"):
            return await _huge(writer, reader, chunked=scenario == "huge-chunked")
        if body.get("streaming"):
            return await self._stream(scenario, secret, reader, writer)
        if scenario == "empty-turn":
            return await _json(writer, 200, {})
        if scenario == "drip":
            return await _drip(writer, reader, raw("send_message.json"))
        if scenario.startswith("stop-"):
            return await _json(
                writer,
                200,
                {**SYNC, "stop_reason": {"message_type": "stop_reason", "stop_reason": scenario[5:]}},
            )
        return await _send(writer, 200, "application/json", raw("send_message.json"))

    async def _agents(self, path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """The agent list, or its fault of the moment: a cursor that never advances, a 429 asking for a
        long wait, a failure every time, or no answer at all."""
        if self.listing == "loop":
            return await _json(writer, 200, agents())
        if self.listing == "throttled":
            return await _json(writer, 429, {"detail": "slow down"}, {"retry-after": "40"})
        if self.listing == "failing":
            return await _json(writer, 500, {"detail": "listing failed"})
        if self.listing == "hang":
            return await _silent(reader)
        return await _json(writer, 200, [] if "after=" in path else agents())

    async def _stream(
        self, scenario: str, secret: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )

        async def chunk(data: bytes) -> None:
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()

        events = _with_stop(scenario[5:]) if scenario.startswith("stop-") else STREAM
        if scenario == "error-event":
            events = [
                *STREAM[:3],
                {
                    "message_type": "error_message",
                    "error_type": "internal_error",
                    "message": "An error occurred during agent execution.",
                    "run_id": "run-x",
                },
            ]
        if scenario == "leak-event":
            events = [{**STREAM[0], "message_type": "error_message", "message": f"token {secret} refused"}]
        for index, data in enumerate(events):
            await chunk(_event(data))
            if scenario == "slow-stream":
                await asyncio.sleep(SLOW_GAP)
            if index == 2 and scenario == "cut-stream":
                # aiohttp drops what it has buffered but not yet handed over once the connection breaks:
                # the pause lets the proxy take the tokens before the cut, which is what this tests.
                await asyncio.sleep(0.2)
                writer.write(b'40\r\ndata: {"message_type": "assistant_mes')
                await writer.drain()
                return False  # closed mid-chunk: the body never completes
            if index == 2 and scenario == "garbage-stream":
                await chunk(b"this is not sse\n\ndata: {broken json\n\n")
            if index == 0 and scenario == "endless-stream":
                return await _silent(reader)
            if index == 0 and scenario == "pinging":  # a ping every SLOW_GAP while the proxy listens (30 s)
                for _ in range(120):
                    if reader.at_eof():
                        break
                    await asyncio.sleep(SLOW_GAP)
                    await chunk(_event(STREAM[0]))
                return False
            if index == 0 and scenario == "drip-event":  # an event that never completes, byte by byte
                for byte in _event(STREAM[1]):
                    if reader.at_eof():
                        return False
                    await chunk(bytes([byte]))
                    await asyncio.sleep(SLOW_GAP)
        await chunk(b"data: [DONE]\n\n")
        await chunk(b"")
        return True


async def _json(
    writer: asyncio.StreamWriter, status: int, payload: object, headers: dict[str, str] | None = None
) -> bool:
    return await _send(writer, status, "application/json", json.dumps(payload).encode(), headers)


def _head(status: int, media_type: str, length: int | None, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"content-type: {media_type}"]
    lines.append(f"content-length: {length}" if length is not None else "transfer-encoding: chunked")
    lines += (f"{name}: {value}" for name, value in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _send(
    writer: asyncio.StreamWriter,
    status: int,
    media_type: str,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> bool:
    writer.write(_head(status, media_type, len(body), headers) + body)
    await writer.drain()
    return True


async def _silent(reader: asyncio.StreamReader) -> bool:
    await reader.read()  # silent until the proxy gives up and closes the connection
    return False


async def _drip(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, body: bytes) -> bool:
    """A whole answer a byte every DRIP_GAP: never silent long enough for a read timeout."""
    writer.write(_head(200, "application/json", len(body)))
    for byte in body:
        if reader.at_eof():
            return False
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(DRIP_GAP)
    return True


async def _huge(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, *, chunked: bool) -> bool:
    """HUGE bytes of a whole turn's JSON, declared up front or in chunks of unknown total."""
    writer.write(_head(200, "application/json", None if chunked else HUGE))
    piece = b" " * 65536
    for _ in range(HUGE // len(piece)):
        if reader.at_eof():
            return False
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        await writer.drain()
    return False
