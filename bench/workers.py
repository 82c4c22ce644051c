"""`python -m bench.workers`: sync throughput and added latency with 1 and 2 workers, with and without
Redis (the shared turn lock), side by side in one run (issue 15). About 3 minutes; markdown on stdout.

Four proxies run at once against one fake Letta (idle ones cost no CPU), and each run measures them in
turn, so that every figure of a run saw the same machine: wrk with 32 connections flat out (throughput),
then 32 connections with 500 ms think time (latency with no queue in front; "added" is over the fake's).
"""

import argparse
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import load, report, wire
from bench.processes import MachineLoad, Server, Servers, free_port
from bench.scenarios import Config, Endpoint
from bench.stack import PROXY_KEY, say, start_fake, start_proxy, warm_up

SETUPS = [(1, False), (2, False), (1, True), (2, True)]  # (PROXY_WORKERS, with Redis)


def start_redis(servers: Servers, tmp: Path) -> Server:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = servers.start("redis", argv, port, cwd=tmp)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return server
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def label(workers: int, redis: bool) -> str:
    return f"{workers} worker{'s' if workers > 1 else ''}, {'Redis lock' if redis else 'in-process queue'}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    config = Config()
    profile = wire.Profile.parse(1, config.stream)
    flat: dict[str, list[load.Sample]] = {}
    paced: dict[str, list[load.Sample]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name, Servers(Path(tmp_name)) as servers:
        tmp = Path(tmp_name)
        fake = start_fake(servers, [profile])
        redis = start_redis(servers, tmp)
        targets = [Endpoint(report.DIRECT, fake.url, "", fake.process.pid, letta=True)]
        for workers, shared in SETUPS:
            extra = {"PROXY_WORKERS": str(workers)}
            if shared:
                extra["PROXY_REDIS_URL"] = f"redis://127.0.0.1:{redis.port}/0"
            proxy = start_proxy(servers, fake, tmp, f"proxy-{workers}-{shared}", **extra)
            targets.append(
                Endpoint(label(workers, shared), proxy.url, PROXY_KEY, proxy.process.pid, letta=False)
            )
        say("servers up; warming up")
        warm_up(targets, profile, 64)
        with MachineLoad() as seen:
            for number in range(1, args.runs + 1):
                say(f"run {number}/{args.runs}")
                for target in targets:
                    url, body = target.url(profile), target.body(profile, False)
                    for samples, think in ((flat, 0.0), (paced, config.think_ms)):
                        sample = load.wrk(
                            url, body, target.key, 32, args.seconds, think, agents=profile.agents
                        )
                        samples.setdefault(target.label, []).append(sample)
    print(
        f"Medians of {args.runs} runs, wrk, 32 connections, {args.seconds:g} s each; other processes used "
        f"{seen.others:.0%} of the machine's CPU meanwhile.\n"
    )
    print("| setup | sync flat out (req/s) | vs 1 worker | errors | paced p50 / p99 (ms) | added p50 (ms) |")
    print("|---|---|---|---|---|---|")
    direct = statistics.median(s.p50_ms for s in paced[report.DIRECT])
    for target in targets:
        rps = statistics.median(s.rps for s in flat[target.label])
        p50 = statistics.median(s.p50_ms for s in paced[target.label])
        p99 = statistics.median(s.p99_ms for s in paced[target.label])
        errors = sum(s.errors for s in flat[target.label] + paced[target.label])
        base = (
            statistics.median(s.rps for s in flat[label(1, "Redis" in target.label)])
            if target.label != report.DIRECT
            else rps
        )
        ratio = f"{rps / base:.2f}×" if target.label != report.DIRECT else ""
        added = f"{p50 - direct:.2f}" if target.label != report.DIRECT else ""
        print(f"| {target.label} | {rps:.0f} | {ratio} | {errors} | {p50:.2f} / {p99:.2f} | {added} |")


if __name__ == "__main__":
    main()
