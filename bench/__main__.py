"""`python -m bench`: every scenario, side by side, in one run, then the table (markdown, on stdout).

    python -m bench              # the published figures: ~15 min; installs LiteLLM (bench/.venv-litellm) once
    python -m bench --smoke      # seconds: checks that the harness still runs end to end; judges nothing

Starts the fake Letta, the proxy (`python -m proxy`, as users run it) and LiteLLM's proxy as processes on
free loopback ports, and stops them all at the end, whatever happens. Progress goes to stderr.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import signal
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import NoReturn

from bench import litellm, report, scenarios, wire
from bench.processes import MachineLoad, Servers
from bench.scenarios import Config, Endpoint, Results
from bench.stack import PROXY_KEY, say, start_fake, start_litellm, start_proxy, warm_up


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    packages = ", ".join(
        f"{name} {version(name)}"
        for name in ("granian", "litestar", "letta-client", "httpx", "aiohttp", "msgspec")
    )
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}; {packages}"
    )


def run(config: Config, raw: Path | None) -> None:
    profiles = [wire.Profile.parse(i + 1, text) for i, text in enumerate(config.profiles)]
    by_text = dict(zip(config.profiles, profiles, strict=True))
    results = Results()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name, Servers(Path(tmp_name)) as servers:
        tmp = Path(tmp_name)
        fake = start_fake(servers, profiles)
        proxy = start_proxy(servers, fake, tmp)
        targets = [
            Endpoint(report.DIRECT, fake.url, "", fake.process.pid, letta=True),
            Endpoint(report.PROXY, proxy.url, PROXY_KEY, proxy.process.pid, letta=False),
        ]
        if config.litellm:
            peer = start_litellm(servers, fake, profiles, tmp)
            targets.append(
                Endpoint(
                    report.LITELLM,
                    peer.url,
                    litellm.MASTER_KEY,
                    peer.process.pid,
                    letta=False,
                    per_agent=False,
                )
            )
        say("servers up; warming up")
        warm_up(targets, by_text[config.sequential_stream], config.warm_up)
        with MachineLoad() as load_seen:
            for number in range(1, config.runs + 1):
                say(f"run {number}/{config.runs}: sync flat out, sync paced, 32 streams")
                scenarios.sync_saturated(config, targets, by_text.__getitem__, results)
                scenarios.sync_paced(config, targets, by_text.__getitem__, results)
                scenarios.streaming(config, targets, by_text.__getitem__, results)
            for number in range(1, config.open_runs + 1):
                say(f"run {number}/{config.open_runs}: {config.open_streams} open streams")
                scenarios.open_streams(config, targets, by_text.__getitem__, results)
            say(f"{config.sequential} sequential requests through the proxy")
            scenarios.sequential(config, targets[1], by_text.__getitem__, results)
            say(
                f"siege: {config.siege_idle} idle connections and {config.siege_stalled} stalled streams "
                f"for {config.siege_seconds:g} s"
            )
            scenarios.siege(config, targets[1], by_text.__getitem__, results)
        say("done; stopping the servers")
    rows = report.build(config, results, judged=config.judged)
    print(f"Machine: {machine()}")
    now = datetime.datetime.now(datetime.UTC)
    print(f"Date: {now:%Y-%m-%d %H:%M} UTC; command: python -m bench {' '.join(sys.argv[1:])}")
    print(
        f"Medians of {config.runs} runs ({config.open_runs} for open streams). Other processes used "
        f"{load_seen.others:.0%} of the machine's CPU during the measurement (steal {load_seen.steal:.0%})."
    )
    print()
    print(report.markdown(rows))
    if raw is not None:
        samples = {
            f"{scenario}/{label}": [dataclasses.asdict(s) for s in values]
            for (scenario, label), values in results.samples.items()
        }
        figures = {f"{scenario}/{name}": values for (scenario, name), values in results.figures.items()}
        raw.write_text(json.dumps({"samples": samples, "figures": figures}, indent=1))


def _terminate(signum: int, _frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through `Servers`, which stops every process


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny counts, no LiteLLM: checks it runs")
    parser.add_argument("--runs", type=int, help="runs per scenario (default 5; smoke 1)")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument("--raw", type=Path, help="also write every sample as JSON here")
    args = parser.parse_args()
    config = scenarios.SMOKE if args.smoke else scenarios.FULL
    if args.runs is not None:
        config = dataclasses.replace(config, runs=args.runs, open_runs=min(args.runs, config.open_runs))
    if args.no_litellm:
        config = dataclasses.replace(config, litellm=False)
    signal.signal(signal.SIGTERM, _terminate)
    run(config, args.raw)


if __name__ == "__main__":
    main()
