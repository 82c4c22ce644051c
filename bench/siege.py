"""The siege: idle connections and stalled streams held open while /health and sync turns are probed.

Run as its own process (`python -m bench.siege ...`); prints one JSON document. It opens `--idle`
connections that never send a byte and `--stalled` streams whose clients read the response head and then
stop reading (a 4 KiB receive buffer, reading paused), holds them for `--seconds`, and meanwhile probes
`GET /health` and one sync turn, each on a new connection as a liveness probe or a new client would.
Every probe has a deadline; one that misses it counts as unanswered. Bounded in count and time.
"""

import argparse
import asyncio
import json
import resource
import socket
import sys
import time
from dataclasses import dataclass, field

PROBE_TIMEOUT = 5.0
OPEN_TIMEOUT = 10.0


@dataclass
class Siege:
    host: str
    port: int
    key: str
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(default_factory=list)
    stalled: list[asyncio.StreamWriter] = field(default_factory=list)
    idle_refused: int = 0
    stalled_refused: int = 0

    def request(self, method: str, path: str, body: bytes = b"") -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nConnection: close\r\n"
        if body:
            head += f"Authorization: Bearer {self.key}\r\nContent-Type: application/json\r\n"
            head += f"Content-Length: {len(body)}\r\n"
        return (head + "\r\n").encode() + body

    async def open_idle(self) -> None:
        """One connection that never sends a byte; not counted if it cannot even be made in time."""
        try:
            async with asyncio.timeout(OPEN_TIMEOUT):
                self.idle.append(await asyncio.open_connection(self.host, self.port))
        except (OSError, TimeoutError):
            self.idle_refused += 1

    async def open_stalled(self, path: str, body: bytes, number: int) -> None:
        """One stream whose client stops reading once the head is in; counted as refused if no 200 head
        comes in time."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(OPEN_TIMEOUT):
                await asyncio.get_running_loop().sock_connect(sock, (self.host, self.port))
                reader, writer = await asyncio.open_connection(sock=sock)
                writer.write(self.request("POST", path, body.replace(b"{i}", b"%04d" % number)))
                head = await reader.readuntil(b"\r\n\r\n")
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            sock.close()
            self.stalled_refused += 1
            return
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        self.stalled.append(writer)
        if not head.startswith(b"HTTP/1.1 200"):
            self.stalled_refused += 1

    async def probe(self, raw: bytes) -> float | None:
        """Seconds to a whole 200 answer on a new connection; None when it failed or missed the deadline."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                writer.write(raw)
                answer = await reader.read()
                writer.close()
        except (OSError, TimeoutError):
            return None
        return time.perf_counter() - started if answer.startswith(b"HTTP/1.1 200") else None

    async def keep_probing(self, raw: bytes, period: float, until: float) -> list[float | None]:
        results = []
        while time.monotonic() < until:
            results.append(await self.probe(raw))
            await asyncio.sleep(period)
        return results

    def idle_closed(self) -> int:
        """How many of the idle connections the server has closed."""
        return sum(reader.at_eof() for reader, _ in self.idle)


async def run(args: argparse.Namespace) -> dict[str, object]:
    siege = Siege(args.host, args.port, args.key)
    opened = time.perf_counter()
    await asyncio.gather(*(siege.open_idle() for _ in range(args.idle)))
    await asyncio.gather(
        *(siege.open_stalled(args.stream_path, args.stream_body.encode(), n) for n in range(args.stalled))
    )
    opening = time.perf_counter() - opened
    until = time.monotonic() + args.seconds
    health, turns = await asyncio.gather(
        siege.keep_probing(siege.request("GET", "/health"), 0.2, until),
        siege.keep_probing(siege.request("POST", args.sync_path, args.sync_body.encode()), 0.5, until),
    )
    closed = siege.idle_closed()
    for _, writer in siege.idle:
        writer.close()
    for writer in siege.stalled:
        writer.close()
    return {
        "opening_s": opening,
        "idle": args.idle,
        "stalled": args.stalled,
        "idle_refused": siege.idle_refused,
        "stalled_refused": siege.stalled_refused,
        "idle_closed": closed,
        "health": health,
        "sync": turns,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--stalled", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the siege is held")
    parser.add_argument("--stream-path", required=True)
    parser.add_argument("--stream-body", required=True, help="`{i}` becomes the stream's number")
    parser.add_argument("--sync-path", required=True)
    parser.add_argument("--sync-body", required=True)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.idle + args.stalled + 256
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    import uvloop

    json.dump(uvloop.run(run(args)), sys.stdout)


if __name__ == "__main__":
    main()
