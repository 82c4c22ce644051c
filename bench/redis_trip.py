"""`python -m bench.redis_trip`: what one Redis round trip costs the proxy, warm and after an idle gap.

The shared turn lock (`proxy/redis_turns.py`) needs one round trip before a turn goes to Letta (the
ticket-and-grant script) and one after it (leaving), both through redis-py, the well-kept client the
proxy uses for every Redis call. This prints, against a throwaway `redis-server` on loopback, the
median wall time of: a PING on a plain socket (the floor any client shares), a PING through redis-py's
client, and the lock granted (`enter`: one script through redis-py; the release runs untimed after).
"Warm" runs back to back; "idle" waits 20 ms between calls, as a turn does when the proxy is not
saturated: that is the figure the paced bench latency sees. About 10 seconds; markdown on stdout.
"""

import argparse
import asyncio
import socket
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from bench.processes import Servers
from bench.workers import start_redis
from proxy.redis_store import connect
from proxy.redis_turns import RedisTurns

IDLE_GAP = 0.02  # seconds between calls in the "idle" column


async def median_ms(
    call: Callable[[int], Awaitable[Callable[[], None] | None]], calls: int, gap: float
) -> float:
    """The median time to await `call`; what it returns (a lock's release) runs after the clock stops."""
    times = []
    for number in range(-50, calls):  # 50 warm-up calls: connections open, scripts loaded
        started = time.perf_counter()
        after = await call(number)
        if number >= 0:
            times.append(1000 * (time.perf_counter() - started))
        if after is not None:
            after()
        await asyncio.sleep(gap)
    return statistics.median(times)


async def measure(port: int, calls: int) -> list[tuple[str, float, float]]:
    loop = asyncio.get_running_loop()
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setblocking(False)

    async def socket_ping(_: int) -> None:
        await loop.sock_sendall(raw, b"PING\r\n")
        await loop.sock_recv(raw, 64)

    client = connect(f"redis://127.0.0.1:{port}/0")
    turns = RedisTurns(client, timeout=10, lease_seconds=30)
    await turns.start()

    async def client_ping(_: int) -> None:
        await client.ping()

    async def lock(number: int) -> Callable[[], None]:
        return await turns.enter(f"bench-{number % 64}")

    rows = []
    for name, call in (
        ("PING, plain socket", socket_ping),
        ("PING, redis-py client", client_ping),
        ("the turn lock granted (`RedisTurns.enter`)", lock),
    ):
        rows.append((name, await median_ms(call, calls, 0), await median_ms(call, calls, IDLE_GAP)))
    await turns.aclose()
    await client.aclose()
    raw.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp, Servers(Path(tmp)) as servers:
        redis = start_redis(servers, Path(tmp))
        rows = uvloop.run(measure(redis.port, args.calls))
    print(f"Median wall time of one call, {args.calls} calls each, redis-server on loopback.\n")
    print(f"| call | warm (ms) | after {IDLE_GAP * 1000:g} ms idle (ms) |")
    print("|---|---|---|")
    for name, warm, idle in rows:
        print(f"| {name} | {warm:.3f} | {idle:.3f} |")


if __name__ == "__main__":
    main()
