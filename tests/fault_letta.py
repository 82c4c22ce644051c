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
SCENARIOS = (
    "ok",
    "hang",
    "invalid-json",
    "cut-stream",
    "garbage-stream",
    "endless-stream",
    "slow-stream",
    "error-event",
    *(f"status-{code}" for code in STATUSES),
    *(f"stop-{reason}" for reason in STOP_REASONS),
)
SLOW_GAP = 0.3  # seconds between events of the slow stream

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
        self.in_flight += 1
        try:
            return await self._answer(method, path, body, reader, writer)
        finally:
            self.in_flight -= 1

    async def _answer(
        self,
        method: str,
        path: str,
        body: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        if path.startswith("/v1/agents/?") or path == "/v1/agents/":
            return await _json(writer, 200, [] if "after=" in path else agents())
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
        if scenario == "invalid-json":
            return await _send(writer, 200, "application/json", b"{not json")
        if body.get("streaming"):
            return await self._stream(scenario, reader, writer)
        if scenario.startswith("stop-"):
            return await _json(
                writer,
                200,
                {**SYNC, "stop_reason": {"message_type": "stop_reason", "stop_reason": scenario[5:]}},
            )
        return await _send(writer, 200, "application/json", raw("send_message.json"))

    async def _stream(
        self, scenario: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
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
        for index, data in enumerate(events):
            await chunk(_event(data))
            if scenario == "slow-stream":
                await asyncio.sleep(SLOW_GAP)
            if index == 2 and scenario == "cut-stream":
                writer.write(b'40\r\ndata: {"message_type": "assistant_mes')
                await writer.drain()
                return False  # closed mid-chunk: the body never completes
            if index == 2 and scenario == "garbage-stream":
                await chunk(b"this is not sse\n\ndata: {broken json\n\n")
            if index == 0 and scenario == "endless-stream":
                await reader.read()  # silent until the proxy gives up and closes the connection
                return False
        await chunk(b"data: [DONE]\n\n")
        await chunk(b"")
        return True


async def _json(writer: asyncio.StreamWriter, status: int, payload: object) -> bool:
    return await _send(writer, status, "application/json", json.dumps(payload).encode())


async def _send(writer: asyncio.StreamWriter, status: int, media_type: str, body: bytes) -> bool:
    writer.write(
        b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
        % (status, media_type.encode(), len(body), body)
    )
    await writer.drain()
    return True
