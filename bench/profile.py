"""Where the proxy's CPU goes under load: py-spy on its Granian worker while wrk (sync) or 32 streams run.

    python -m bench.profile --mode sync --seconds 15
    python -m bench.profile --mode stream --seconds 15 --out stream.collapsed.txt

Samples only while the worker holds the GIL (`--gil`), so the shares are of the proxy's Python CPU time.
Prints the share by package of the innermost frame (self time) and the heaviest frames including callees.
py-spy runs through `uvx` (PyPI), so it is not a project dependency.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench import load, wire
from bench.load import wrk_command
from bench.processes import Servers, cpu_seconds, tree
from bench.scenarios import Endpoint
from bench.stack import PROXY_KEY, ROOT, say, start_fake, start_proxy, warm_up

PY_SPY = ["uvx", "--from", "py-spy==0.4.3", "py-spy"]
BOOTSTRAP = {"granian", "multiprocessing", "<frozen runpy>", "proxy/__main__.py"}
FRAME = re.compile(r"^(?P<name>.*) \((?P<path>[^:)]*)(?::\d+)?\)$")


def package(frame: str) -> str:
    """`litestar`, `httpx`, `proxy`, `asyncio`...: the first component of the frame's file path."""
    match = FRAME.match(frame)
    if not match:
        return frame or "native"
    path = match["path"]
    if path == "proxy/__main__.py":
        return path
    return path.split("/")[0] if "/" in path else path.removesuffix(".py")


def summarise(collapsed: Path, top: int = 25) -> str:
    own: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [frame.strip() for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        by_package[package(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "no samples"
    lines = [f"{total} samples on the GIL", "", "self time by package:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in by_package.most_common(12)]
    lines += ["", "heaviest frames, callees included (the server's start-up frames left out):"]
    heavy = [(f, n) for f, n in inclusive.most_common() if package(f) not in BOOTSTRAP][:top]
    lines += [f"  {100 * n / total:5.1f}%  {frame[:140]}" for frame, n in heavy]
    lines += ["", "heaviest frames, self time:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame[:140]}" for frame, n in own.most_common(15)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=["sync", "stream"], default="sync")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path, help="keep the collapsed stacks here (flamegraph.pl input)")
    args = parser.parse_args()
    profile = wire.Profile.parse(1, "50x20:64")
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp_name, Servers(Path(tmp_name)) as servers:
        tmp = Path(tmp_name)
        fake = start_fake(servers, [profile])
        proxy = start_proxy(servers, fake, tmp)
        target = Endpoint("proxy", proxy.url, PROXY_KEY, proxy.process.pid, letta=False)
        warm_up([target], profile)
        worker = max(tree(proxy.process.pid))  # Granian's worker is the leader's child
        duration = args.seconds + 3
        body = target.body(profile, args.mode == "stream")
        if args.mode == "sync":
            command, env = wrk_command(
                target.url(profile), body, PROXY_KEY, 32, duration, agents=profile.agents
            )
        else:
            command = [
                sys.executable,
                "-m",
                "bench.client",
                "--url",
                target.url(profile),
                "--key",
                PROXY_KEY,
                "--body",
                body.decode(),
                "--concurrency",
                "32",
                "--duration",
                str(duration),
                "--agents",
                str(profile.agents),
            ]
            env = dict(os.environ)
        before = cpu_seconds(worker)
        if args.mode == "sync":
            sample = load.wrk(target.url(profile), body, PROXY_KEY, 32, 5, agents=profile.agents)
        else:
            sample = load.client(
                target.url(profile), [body], PROXY_KEY, 32, requests=10**6, seconds=5, agents=profile.agents
            )
        used = cpu_seconds(worker) - before
        print(
            f"proxy worker CPU per {args.mode} turn: {1000 * used / max(1, sample.requests):.2f} ms "
            f"({sample.requests} turns in 5 s, {sample.errors} errors, 32 concurrent, no profiler attached)"
        )
        out = args.out or tmp / "profile.collapsed.txt"
        with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL) as generator:
            say(f"py-spy on worker {worker} for {args.seconds:g} s ({args.mode})")
            subprocess.run(
                [
                    *PY_SPY,
                    "record",
                    "--pid",
                    str(worker),
                    "--duration",
                    str(int(args.seconds)),
                    "--rate",
                    "250",
                    "--gil",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                ],
                check=True,
                capture_output=True,
                env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
            )
            generator.wait(timeout=duration + 60)
        print(summarise(out))


if __name__ == "__main__":
    main()
