"""A fast fake Letta (and OpenAI-compatible upstream) for the benchmark.

A raw asyncio protocol on uvloop with every answer prepared as bytes: it parses only the request line,
`Content-Length` and (for turns) the JSON body, so it stays far from being the bottleneck. Routes:

- `GET /v1/agents/` the agent list (one agent per profile); with `?after=` an empty page, as the SDK pages;
- `POST /v1/agents/{id}/messages` a whole turn, or with `"streaming": true` the token stream (chunked);
- `POST /v1/chat/completions` the same, in OpenAI's format, for LiteLLM's proxy;
- `GET /v1/health/`.

    python -m bench.fake_letta --port 18601 --profile 50x20:64 --profile 5x400:1024
"""

import argparse
import asyncio
import json
import socket
from collections.abc import Callable
from typing import cast
from urllib.parse import parse_qs

from bench import wire

JSON_HEAD = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n"
)
HEALTH = b'{"version":"bench","status":"ok"}'


Answers = tuple[bytes, list[bytes], wire.Profile]  # a whole answer, a stream's frames, the stream's shape


def json_response(body: bytes, status: int = 200) -> bytes:
    reason = b"OK" if status == 200 else b"Not Found"
    return JSON_HEAD % (status, reason, len(body)) + body


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def content_length(head: bytes) -> int:
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    end = head.find(b"\r\n", at + 2)
    return int(head[at + 17 : end if end > 0 else None])


class Upstream:
    """Everything the fake answers, prepared once per profile (agent list pages on first request)."""

    def __init__(self, profiles: list[wire.Profile]) -> None:
        self.records = {slim: wire.agent_records(profiles, slim) for slim in (False, True)}
        ids = [p.agent_id(n) for p in profiles for n in range(p.agents)]
        self.positions = {agent_id: position for position, agent_id in enumerate(ids)}
        self.pages: dict[bytes, bytes] = {}
        self.health = json_response(HEALTH)
        self.not_found = json_response(b'{"detail":"Not found"}', 404)
        turn = json_response(wire.letta_turn())
        self.turns: dict[bytes, Answers] = {}
        self.completions: dict[str, Answers] = {}
        for p in profiles:
            letta = (turn, self._stream(wire.letta_stream(p)), p)
            self.turns.update({p.agent_id(n).encode(): letta for n in range(p.agents)})
            self.completions[p.name] = (
                json_response(wire.openai_completion(p)),
                self._stream(wire.openai_stream(p)),
                p,
            )

    def page(self, query: bytes) -> bytes:
        """`GET /v1/agents/`: `limit` agents after the `after` cursor; relations only if `include`d."""
        if query not in self.pages:
            params = parse_qs(query.decode())
            start = (
                self.positions.get(params["after"][0], len(self.positions)) + 1 if "after" in params else 0
            )
            limit = int(params.get("limit", ["50"])[0])
            records = self.records["include" in params][start : start + limit]
            self.pages[query] = json_response(b"[" + b",".join(records) + b"]")
        return self.pages[query]

    def completion(self, model: str) -> "Answers | None":
        """OpenAI route: the profile's model name, or one of its agents' names."""
        return self.completions.get(model) or self.completions.get(model.rpartition("-a")[0])

    @staticmethod
    def _stream(events: list[bytes]) -> list[bytes]:
        frames = [chunked(event) for event in events]
        frames[0] = SSE_HEAD + frames[0]
        frames[-1] += b"0\r\n\r\n"
        return frames


class Connection(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection; requests are answered in order."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.streaming: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming is not None:
            self.streaming.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.streaming is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            total = end + 4 + content_length(head)
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            self.answer(head, body)

    def answer(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        method, _, rest = head.partition(b" ")
        target = rest.partition(b" ")[0]
        path, _, query = target.partition(b"?")
        up = self.upstream
        if method == b"post" and path.startswith(b"/v1/agents/") and path.endswith(b"/messages"):
            found = up.turns.get(path[len(b"/v1/agents/") : -len(b"/messages")].rstrip(b"/"))
            self.turn(found, lambda request: bool(request.get("streaming")), body)
        elif method == b"post" and path == b"/v1/chat/completions":
            request = json.loads(body)
            self.turn(
                up.completion(str(request.get("model"))), lambda r: bool(r.get("stream")), body, request
            )
        elif method == b"get" and path.rstrip(b"/") == b"/v1/agents":
            self.transport.write(up.page(query))
        elif method == b"get" and path.rstrip(b"/") == b"/v1/health":
            self.transport.write(up.health)
        else:
            self.transport.write(up.not_found)

    def turn(
        self,
        found: Answers | None,
        wants_stream: Callable[[dict[str, object]], bool],
        body: bytes,
        request: dict[str, object] | None = None,
    ) -> None:
        assert self.transport is not None
        if found is None:
            self.transport.write(self.upstream.not_found)
            return
        whole, frames, profile = found
        if not wants_stream(request if request is not None else json.loads(body)):
            self.transport.write(whole)
        elif profile.delay_ms <= 0:
            self.transport.writelines(frames)
        else:
            self.streaming = asyncio.get_running_loop().create_task(
                self.stream(frames, profile.delay_ms / 1000)
            )

    async def stream(self, frames: list[bytes], delay: float) -> None:
        """The first event at once (Letta's ping or OpenAI's role chunk), then one token every `delay`."""
        assert self.transport is not None
        self.transport.write(frames[0])
        for frame in frames[1:]:
            await asyncio.sleep(delay)
            if self.transport.is_closing():
                return
            self.transport.write(frame)
        self.streaming = None
        if self.buffer:
            self.data_received(b"")


async def serve(host: str, port: int, profiles: list[wire.Profile]) -> None:
    upstream = Upstream(profiles)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Connection(upstream), host, port, backlog=4096, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--profile", action="append", default=[], help="CHUNKSxDELAY_MS:AGENTS, e.g. 50x20:64"
    )
    args = parser.parse_args()
    profiles = [wire.Profile.parse(i + 1, text) for i, text in enumerate(args.profile or ["50x20:64"])]
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port, profiles))
    except ImportError:
        asyncio.run(serve(args.host, args.port, profiles))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
