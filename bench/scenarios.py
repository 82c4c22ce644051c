"""The scenarios, each run against every target side by side (direct to the fake Letta, the proxy, LiteLLM).

A target is an `Endpoint`: where to send a chat turn and in which wire format. Runs interleave the
targets (direct, proxy, LiteLLM, direct, ...) so that a slow minute on the machine hits all of them.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import load, wire
from bench.processes import PeakRss, open_fds, rss_mib, tree


@dataclass(frozen=True)
class Config:
    """How much load each scenario sends; `FULL` is the published figure, `SMOKE` only checks it runs."""

    runs: int = 5
    sync_seconds: float = 5.0
    think_ms: float = 500.0
    stream: str = "50x20:64"  # 50 token chunks, 20 ms apart (50 tokens/s, a fast LLM), over 64 agents
    stream_rounds: int = 4  # streams per connection per run
    slow: str = "5x400:1024"  # the slow upstream of the open-streams scenario: 2 s per stream
    open_streams: int = 1000
    open_runs: int = 3
    sequential: int = 10_000
    sequential_stream: str = "5x0:8"
    warm_up: int = 64
    siege_idle: int = 2000  # connections that never send a byte
    siege_stalled: int = 200  # streams whose clients stop reading
    siege_seconds: float = 20.0  # held this long (under the proxy's 30 s header deadline)
    siege_stream: str = "1000x20:256"  # 20 s streams, 1,000 chunks: more than the socket buffers hold
    litellm: bool = True
    judged: bool = True  # whether the table checks the targets (not on smoke counts)

    @property
    def profiles(self) -> list[str]:
        return list(dict.fromkeys([self.stream, self.slow, self.sequential_stream, self.siege_stream]))


FULL = Config()
SMOKE = Config(
    runs=1,
    sync_seconds=1.0,
    think_ms=50.0,
    stream="5x5:64",
    stream_rounds=1,
    slow="3x100:64",
    open_streams=50,
    open_runs=1,
    sequential=100,
    warm_up=16,
    siege_idle=20,
    siege_stalled=4,
    siege_seconds=1.0,
    siege_stream="100x20:8",
    litellm=False,
    judged=False,
)


@dataclass(frozen=True)
class Endpoint:
    """One target: a chat turn's URL and body for a profile, the key, and the server's process id.

    URL and body are templates: the load generators put an agent number in place of `{i}`, round robin
    over the profile's agents, so no two concurrent turns go to one agent.
    """

    label: str
    base: str
    key: str
    pid: int
    letta: bool  # Letta's own wire format (direct) rather than OpenAI's
    per_agent: bool = True  # False for LiteLLM: one model per profile, it has no per-agent queue

    def url(self, profile: wire.Profile) -> str:
        if self.letta:
            return f"{self.base}/v1/agents/{profile.agent_id(wire.INDEX)}/messages"
        return f"{self.base}/v1/chat/completions"

    def body(self, profile: wire.Profile, stream: bool) -> bytes:
        if self.letta:
            return wire.letta_request(stream)
        model = profile.agent_name(wire.INDEX) if self.per_agent else profile.name
        return wire.openai_request(model, stream)


@dataclass
class Results:
    """Every sample, by scenario and target label, one per run."""

    samples: dict[tuple[str, str], list[load.Sample]] = field(default_factory=dict)
    figures: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, scenario: str, label: str, sample: load.Sample) -> None:
        self.samples.setdefault((scenario, label), []).append(sample)

    def note(self, scenario: str, name: str, value: float) -> None:
        self.figures.setdefault((scenario, name), []).append(value)


Profiles = Callable[[str], wire.Profile]


def sync_saturated(config: Config, targets: list[Endpoint], profile: Profiles, results: Results) -> None:
    """wrk, 32 keep-alive connections flat out: latency under saturation and the throughput ceiling."""
    _sync(config, targets, profile, results, "sync32", think_ms=0)


def sync_paced(config: Config, targets: list[Endpoint], profile: Profiles, results: Results) -> None:
    """wrk, 32 connections each pausing `think_ms` between requests: the added latency without a queue."""
    _sync(config, targets, profile, results, "paced32", think_ms=config.think_ms)


def _sync(
    config: Config,
    targets: list[Endpoint],
    profile: Profiles,
    results: Results,
    scenario: str,
    think_ms: float,
) -> None:
    p = profile(config.stream)
    for target in targets:
        sample = load.wrk(
            target.url(p),
            target.body(p, False),
            target.key,
            32,
            config.sync_seconds,
            think_ms,
            agents=p.agents,
        )
        results.add(scenario, target.label, sample)


def streaming(config: Config, targets: list[Endpoint], profile: Profiles, results: Results) -> None:
    """32 concurrent SSE streams of 50 chunks: time to the first chunk and to `[DONE]`.

    The 32 clients start spread over one stream's length, so that 32 streams are open at any time but
    their openings do not all fall in the same millisecond, run after run.
    """
    p = profile(config.stream)
    for target in targets:
        sample = load.client(
            target.url(p),
            [target.body(p, True)],
            target.key,
            32,
            requests=32 * config.stream_rounds,
            seconds=120,
            timeout=60,
            agents=p.agents,
            stagger=p.chunks * p.delay_ms / 1000,
        )
        results.add("stream32", target.label, sample)


def open_streams(config: Config, targets: list[Endpoint], profile: Profiles, results: Results) -> None:
    """`open_streams` SSE streams at once from a slow upstream: peak RSS of the server's process tree."""
    p = profile(config.slow)
    for target in targets:
        if target.letta:
            continue  # the fake's own memory is not the question
        with PeakRss(target.pid) as rss:
            sample = load.client(
                target.url(p),
                [target.body(p, True)],
                target.key,
                config.open_streams,
                requests=config.open_streams,
                seconds=60,
                timeout=120,
                agents=p.agents,
            )
        results.add("open", target.label, sample)
        results.note("open", f"{target.label}:rss", rss.peak)
        results.note("open", f"{target.label}:pss", rss.peak_pss)


def sequential(config: Config, proxy: Endpoint, profile: Profiles, results: Results) -> None:
    """`sequential` requests one after another, sync and streamed alternately: RSS and open files.

    Measured after the first tenth (warm: caches and pools filled), at half way and at the end.
    """
    p = profile(config.sequential_stream)
    bodies = [proxy.body(p, False), proxy.body(p, True)]
    pids = tree(proxy.pid)
    checkpoints = [config.sequential // 10, config.sequential // 2, config.sequential]
    done = 0
    for checkpoint in checkpoints:
        sample = load.client(
            proxy.url(p), bodies, proxy.key, 1, requests=checkpoint - done, seconds=600, agents=p.agents
        )
        results.add("sequential", proxy.label, sample)
        done = checkpoint
        time.sleep(0.5)  # let closed connections be reaped before counting descriptors
        results.note("sequential", "rss", rss_mib(pids))
        results.note("sequential", "fds", open_fds(pids))


def siege(config: Config, proxy: Endpoint, profile: Profiles, results: Results) -> None:
    """`siege_idle` silent connections and `siege_stalled` streams nobody reads, held `siege_seconds`
    while /health and a sync turn are probed on new connections: how many answered, how fast, peak RSS."""
    stream, sync = profile(config.siege_stream), profile(config.sequential_stream)
    before = rss_mib(tree(proxy.pid))
    with PeakRss(proxy.pid) as rss:
        report = load.siege(
            proxy.base,
            proxy.key,
            config.siege_idle,
            config.siege_stalled,
            config.siege_seconds,
            stream=(proxy.url(stream), proxy.body(stream, True)),
            sync=(
                proxy.url(sync).replace(wire.INDEX, "0000"),
                proxy.body(sync, False).replace(b"{i}", b"0000"),
            ),
        )
    results.note("siege", "rss_before", before)
    results.note("siege", "rss", rss.peak)
    results.note("siege", "idle_closed", report["idle_closed"])
    results.note("siege", "idle_refused", report["idle_refused"])
    results.note("siege", "stalled_refused", report["stalled_refused"])
    for probe in ("health", "sync"):
        seconds = report[probe]
        answered = [value * 1000 for value in seconds if value is not None]
        results.note("siege", f"{probe}:asked", len(seconds))
        results.note("siege", f"{probe}:answered", len(answered))
        for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
            results.note("siege", f"{probe}:{name}", load.percentile(answered, q))
