"""The two load generators, each run as its own process: wrk for sync requests, `bench.client` for SSE.

Both give a `Sample`: throughput, latency percentiles, errors, and for streams the time to the first
chunk and to `[DONE]`. Without wrk on the machine the sync load falls back to `bench.client` (slower,
Python-bound), and the sample says so.
"""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

LUA = Path(__file__).with_name("post.lua")
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Sample:
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    first_p50_ms: float = 0.0
    first_p99_ms: float = 0.0
    tool: str = "wrk"


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the value below which a fraction `q` of the values lie."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def wrk(
    url: str, body: bytes, key: str, connections: int, seconds: float, think_ms: float = 0, agents: int = 1
) -> Sample:
    """Closed loop: `connections` keep-alive connections, each sending its next request when answered.

    `{i}` in the URL's path and in the body is replaced by an agent number, round robin over `agents`.
    """
    if shutil.which("wrk") is None:
        return client(url, [body], key, connections, requests=10**9, seconds=seconds, agents=agents)
    argv, env = wrk_command(url, body, key, connections, seconds, think_ms, agents)
    out = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=seconds + 30, check=True
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("BENCH "))
    figures = json.loads(line[6:])
    return Sample(
        requests=figures["requests"],
        errors=figures["errors"] + figures["non_2xx"],
        rps=figures["requests"] / (figures["duration_us"] / 1e6),
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
    )


def wrk_command(
    url: str, body: bytes, key: str, connections: int, seconds: float, think_ms: float = 0, agents: int = 1
) -> tuple[list[str], dict[str, str]]:
    parts = urlsplit(url)
    threads = min(2, connections)
    env = {
        **os.environ,
        "BENCH_PATH": parts.path,
        "BENCH_BODY": body.decode(),
        "BENCH_KEY": key,
        "BENCH_DELAY_MS": str(think_ms),
        "BENCH_AGENTS": str(agents),
        "BENCH_THREADS": str(threads),
    }
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        f"{parts.scheme}://{parts.netloc}/",
    ]
    return argv, env


def client(
    url: str,
    bodies: list[bytes],
    key: str,
    concurrency: int,
    *,
    requests: int,
    seconds: float,
    timeout: float = 60.0,
    agents: int = 1,
    stagger: float = 0.0,
) -> Sample:
    """`bench.client` in its own process; percentiles over every request it made."""
    argv = [
        sys.executable,
        "-m",
        "bench.client",
        "--url",
        url,
        "--key",
        key,
        "--concurrency",
        str(concurrency),
        "--requests",
        str(requests),
        "--duration",
        str(seconds),
        "--timeout",
        str(timeout),
        "--agents",
        str(agents),
        "--stagger",
        str(stagger),
    ]
    for body in bodies:
        argv += ["--body", body.decode()]
    out = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=seconds + stagger + timeout + 30
    )
    if out.returncode != 0:
        raise RuntimeError(f"bench.client failed:\n{out.stderr[-2000:]}")
    report = json.loads(out.stdout)
    results = report["results"]
    ok = [r for r in results if r[1]]
    totals = [r[3] * 1000 for r in ok]
    firsts = [r[2] * 1000 for r in ok]
    return Sample(
        requests=len(results),
        errors=len(results) - len(ok),
        rps=len(results) / report["wall_s"] if report["wall_s"] else 0.0,
        p50_ms=percentile(totals, 0.50),
        p99_ms=percentile(totals, 0.99),
        first_p50_ms=percentile(firsts, 0.50),
        first_p99_ms=percentile(firsts, 0.99),
        tool="bench.client",
    )


def siege(
    base: str,
    key: str,
    idle: int,
    stalled: int,
    seconds: float,
    stream: tuple[str, bytes],
    sync: tuple[str, bytes],
) -> dict[str, Any]:
    """`bench.siege` in its own process: its JSON report (probe latencies in seconds, None: unanswered)."""
    parts = urlsplit(base)
    argv = [
        sys.executable,
        "-m",
        "bench.siege",
        "--host",
        parts.hostname or "127.0.0.1",
        "--port",
        str(parts.port),
        "--key",
        key,
        "--idle",
        str(idle),
        "--stalled",
        str(stalled),
        "--seconds",
        str(seconds),
        "--stream-path",
        urlsplit(stream[0]).path,
        "--stream-body",
        stream[1].decode(),
        "--sync-path",
        urlsplit(sync[0]).path,
        "--sync-body",
        sync[1].decode(),
    ]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        raise RuntimeError(f"bench.siege failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)
