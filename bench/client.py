"""A small async HTTP/1.1 load client for what wrk cannot measure: SSE time to first chunk and to `[DONE]`.

Raw asyncio streams on uvloop (no HTTP library), keep-alive connections, one closed loop per virtual
user. It runs as its own process so its CPU is not the bench's, and prints one JSON document:
`{"wall_s": ..., "results": [[status, ok, first_s, total_s, events], ...]}`. Bounded in count and time.

    python -m bench.client --url http://127.0.0.1:18602/v1/chat/completions --body '{...}' \
        --concurrency 32 --requests 320
"""

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

Result = tuple[int, bool, float, float, int]


@dataclass
class Plan:
    """What every virtual user does, and when all of them must stop."""

    host: str
    port: int
    path: str
    bodies: list[bytes]
    key: str
    requests: int
    deadline: float
    timeout: float
    agents: int = 1
    issued: int = 0
    results: list[Result] = field(default_factory=list)

    def next_request(self) -> bytes | None:
        """The next request's bytes: bodies alternate, `{i}` becomes the next agent's number."""
        if self.issued >= self.requests or time.monotonic() >= self.deadline:
            return None
        number = b"%04d" % (self.issued % self.agents)
        body = self.bodies[self.issued % len(self.bodies)].replace(b"{i}", number)
        path = self.path.replace("{i}", number.decode())
        self.issued += 1
        auth = f"Authorization: Bearer {self.key}\r\n" if self.key else ""
        return (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body


async def read_response(reader: asyncio.StreamReader, started: float) -> tuple[int, float, bytes, bool]:
    """Status, time to the first SSE `data:` (or to the body), the body, and whether the connection stays."""
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    status = int(head[9:12])
    first = 0.0
    body = bytearray()
    if b"transfer-encoding: chunked" in head:
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
            if not first and b"data:" in body:
                first = time.perf_counter() - started
        await reader.readuntil(b"\r\n")
    else:
        at = head.find(b"content-length:")
        length = int(head[at + 15 : head.find(b"\r\n", at)]) if at >= 0 else 0
        body += await reader.readexactly(length)
    total = time.perf_counter() - started
    return status, first or total, bytes(body), b"connection: close" not in head


def judge(status: int, body: bytes) -> tuple[bool, int]:
    """Whether an answer is whole: a 200, and for SSE a `[DONE]` with no error event before it."""
    events = body.count(b"data: ")
    if status != 200:
        return False, events
    if events == 0:
        return not body.startswith(b'{"error"'), 0
    return body.rstrip().endswith(b"data: [DONE]") and b'data: {"error"' not in body, events


async def user(plan: Plan, start_after: float) -> None:
    """One client: sends its next request when the last answer is in, reconnecting when needed."""
    await asyncio.sleep(start_after)
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while (request := plan.next_request()) is not None:
        started = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(plan.host, plan.port)
            assert reader is not None
            writer.write(request)
            status, first, answer, keep = await asyncio.wait_for(read_response(reader, started), plan.timeout)
            ok, events = judge(status, answer)
            plan.results.append((status, ok, first, time.perf_counter() - started, events))
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            plan.results.append((0, False, 0.0, time.perf_counter() - started, 0))
            keep = False
        if not keep and writer is not None:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def run(plan: Plan, concurrency: int, stagger: float) -> float:
    """`stagger` spreads the clients' first requests evenly over that many seconds."""
    started = time.perf_counter()
    await asyncio.gather(*(user(plan, n * stagger / concurrency) for n in range(concurrency)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", action="append", required=True, help="JSON body; several alternate")
    parser.add_argument("--key", default="")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds before no new request starts")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for one answer")
    parser.add_argument("--agents", type=int, default=1, help="`{i}` in URL and body: round robin over these")
    parser.add_argument("--stagger", type=float, default=0.0, help="seconds over which the clients start")
    args = parser.parse_args()
    url = urlsplit(args.url)
    plan = Plan(
        url.hostname or "127.0.0.1",
        url.port or 80,
        unquote(url.path),
        [b.encode() for b in args.body],
        args.key,
        args.requests,
        time.monotonic() + args.duration,
        args.timeout,
        args.agents,
    )
    try:
        import uvloop

        wall = uvloop.run(run(plan, args.concurrency, args.stagger))
    except ImportError:
        wall = asyncio.run(run(plan, args.concurrency, args.stagger))
    json.dump({"wall_s": wall, "results": plan.results}, sys.stdout)


if __name__ == "__main__":
    main()
