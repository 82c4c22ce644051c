"""The benchmark harness still runs end to end (smoke counts, no LiteLLM). Its speed is not judged here."""

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from bench import wire
from bench.fake_letta import Upstream
from bench.processes import Servers, free_port, wait_ready

pytestmark = pytest.mark.slow  # real processes; outside the fast loop

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    "| sync, 32 connections, flat out | latency p50 / p99 (ms) |",
    "| sync, 32 connections, flat out | throughput (req/s) |",
    "| stream, 32 concurrent, 5 chunks | first chunk p50 (ms) |",
    "| 50 open streams, slow upstream | peak RSS / PSS, whole process tree (MiB) |",
    "| 100 sequential (sync and stream alternately) | open files after 10 / 50 / 100 |",
    "| siege: 20 idle connections + 4 stalled streams, 1 s | GET /health on a new connection: answered;",
]


def test_smoke_run_prints_every_row() -> None:
    """`python -m bench --smoke` finishes, prints every scenario's rows, and leaves no process behind."""
    out = _run_bench("bench", "--smoke")
    for row in ROWS:
        assert row in out, out


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_workers_run_measures_every_setup() -> None:
    """`python -m bench.workers` measures 1 and 2 workers, with and without Redis, each without an error."""
    out = _run_bench("bench.workers", "--runs", "1", "--seconds", "1")
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.splitlines() if "|" in line}
    for setup in ("1 worker, in-process queue", "2 workers, in-process queue", "1 worker, Redis lock"):
        rps, _ratio, errors, *_ = (cell.strip() for cell in rows[setup])
        assert float(rps) > 0 and errors == "0", out
    assert rows["2 workers, Redis lock"][2].strip() == "0", out


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_trip_times_each_call() -> None:
    """`python -m bench.redis_trip` times a socket PING, a redis-py PING and the lock's grant, warm, idle."""
    out = _run_bench("bench.redis_trip", "--calls", "10")
    rows = [line.split("|")[1:-1] for line in out.splitlines()[3:] if line.startswith("| ")]
    assert [row[0].strip() for row in rows] == [
        "PING, plain socket",
        "PING, redis-py client",
        "the turn lock granted (`RedisTurns.enter`)",
    ], out
    assert all(float(cell) > 0 for row in rows for cell in row[1:]), out


def test_fake_letta_speaks_the_captured_wire_format(tmp_path: Path) -> None:
    """The fake pages its agents as the SDK expects (`after`, then `[]`) and ends a stream with `[DONE]`."""
    profile = wire.Profile.parse(1, "3x0:3")
    with Servers(tmp_path) as servers:
        port = free_port()
        fake = servers.start(
            "fake",
            [sys.executable, "-m", "bench.fake_letta", "--port", str(port), "--profile", profile.spec],
            port,
            cwd=ROOT,
        )
        wait_ready(fake, "/v1/health/", 20)
        first = httpx.get(f"{fake.url}/v1/agents/", params={"limit": 2, "include": "agent.tags"}).json()
        assert [(a["id"], a["name"]) for a in first] == [
            (profile.agent_id(n), f"bench-3x0-a000{n}") for n in (0, 1)
        ]
        rest = httpx.get(f"{fake.url}/v1/agents/", params={"limit": 2, "after": first[-1]["id"]}).json()
        assert [a["id"] for a in rest] == [profile.agent_id(2)]
        assert httpx.get(f"{fake.url}/v1/agents/", params={"after": rest[-1]["id"]}).json() == []
        url = f"{fake.url}/v1/agents/{profile.agent_id(1)}/messages"
        assert (
            httpx.post(url, content=wire.letta_request(False)).json()["stop_reason"]["stop_reason"]
            == "end_turn"
        )
        streamed = httpx.post(url, content=wire.letta_request(True))
        events = [line for line in streamed.text.split("\n\n") if line]
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert len(events) == 1 + 3 + 3 and events[-1] == "data: [DONE]"
    assert fake.process.poll() is not None


def test_prepared_answers_cover_every_agent() -> None:
    """Every agent of every profile has its answers, in both wire formats, so none is a 404 by mistake."""
    profiles = [wire.Profile.parse(1, "5x0:2"), wire.Profile.parse(2, "2x100:3")]
    upstream = Upstream(profiles)
    assert set(upstream.turns) == {p.agent_id(n).encode() for p in profiles for n in range(p.agents)}
    assert upstream.completion("bench-2x100-a0002") is upstream.completion("bench-2x100") is not None


def _run_bench(module: str, *args: str) -> str:
    """Runs `python -m module args`, checks it succeeded and left no process behind; returns its stdout."""
    marker = uuid.uuid4().hex
    run = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, "BENCH_SMOKE_RUN": marker},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert _processes_with(f"BENCH_SMOKE_RUN={marker}".encode()) == []
    return run.stdout


def _processes_with(marker: bytes) -> list[int]:
    """Live processes whose environment carries `marker`: what a run started (servers inherit it)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found
