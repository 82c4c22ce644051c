"""The table: medians over the runs, the proxy's cost over direct, its ratio to LiteLLM, and each target.

Differences and ratios are taken run by run (same minute on the machine), then their median is shown.
"""

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from bench.load import Sample
from bench.scenarios import Config, Results

DIRECT, PROXY, LITELLM = "direct", "proxy", "litellm"


@dataclass(frozen=True)
class Row:
    scenario: str
    metric: str
    direct: str
    proxy: str
    litellm: str
    versus: str
    target: str
    verdict: str


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _ms(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


class Table:
    def __init__(self, config: Config, results: Results, judged: bool) -> None:
        self.config = config
        self.results = results
        self.judged = judged
        self.rows: list[Row] = []

    def samples(self, scenario: str, label: str) -> list[Sample]:
        return self.results.samples.get((scenario, label), [])

    def _cell(self, scenario: str, label: str, pick: Callable[[Sample], float]) -> str:
        samples = self.samples(scenario, label)
        if not samples:
            return "n/a"
        errors = sum(s.errors for s in samples)
        text = _ms(_median([pick(s) for s in samples]))
        return f"{text} ({errors} err)" if errors else text

    def paired(
        self,
        scenario: str,
        a: str,
        b: str,
        pick: Callable[[Sample], float],
        combine: Callable[[float, float], float],
    ) -> float:
        pairs = zip(self.samples(scenario, a), self.samples(scenario, b), strict=False)
        return _median([combine(pick(x), pick(y)) for x, y in pairs])

    def verdict(self, ok: bool) -> str:
        return ("met" if ok else "**missed**") if self.judged else "not judged (smoke)"

    def add(
        self,
        scenario: str,
        metric: str,
        pick: Callable[[Sample], float],
        key: str,
        versus: str = "",
        target: str = "",
        ok: bool | None = None,
    ) -> None:
        cells = [self._cell(key, label, pick) for label in (DIRECT, PROXY, LITELLM)]
        verdict = "" if ok is None else self.verdict(ok)
        self.rows.append(Row(scenario, metric, *cells, versus, target, verdict))

    def latency(self, key: str, scenario: str) -> None:
        added50 = self.paired(key, PROXY, DIRECT, lambda s: s.p50_ms, float.__sub__)
        added99 = self.paired(key, PROXY, DIRECT, lambda s: s.p99_ms, float.__sub__)
        cells = [self._pair_cell(key, label) for label in (DIRECT, PROXY, LITELLM)]
        self.rows.append(
            Row(
                scenario,
                "latency p50 / p99 (ms)",
                *cells,
                f"added {_ms(added50)} / {_ms(added99)} ms",
                "added p50 ≤ 1 ms, p99 ≤ 5 ms",
                self.verdict(added50 <= 1 and added99 <= 5),
            )
        )

    def _pair_cell(self, key: str, label: str) -> str:
        samples = self.samples(key, label)
        if not samples:
            return "n/a"
        p50 = _median([s.p50_ms for s in samples])
        p99 = _median([s.p99_ms for s in samples])
        errors = sum(s.errors for s in samples)
        return f"{_ms(p50)} / {_ms(p99)}" + (f" ({errors} err)" if errors else "")


def build(config: Config, results: Results, judged: bool) -> list[Row]:
    table = Table(config, results, judged)
    sync = "sync, 32 connections, flat out"
    table.latency("sync32", sync)
    ratio = table.paired("sync32", PROXY, LITELLM, lambda s: s.rps, float.__truediv__)
    has_litellm = bool(table.samples("sync32", LITELLM))
    table.add(
        sync,
        "throughput (req/s)",
        lambda s: s.rps,
        "sync32",
        f"proxy = {ratio:.1f}× LiteLLM" if has_litellm else "no LiteLLM in this run",
        "≥ 2× LiteLLM",
        ratio >= 2 if has_litellm else None,
    )
    table.latency("paced32", f"sync, 32 connections, {config.think_ms:g} ms think time")

    chunks = config.stream.partition("x")[0]
    stream = f"stream, 32 concurrent, {chunks} chunks"
    added_first = table.paired("stream32", PROXY, DIRECT, lambda s: s.first_p50_ms, float.__sub__)
    table.add(
        stream,
        "first chunk p50 (ms)",
        lambda s: s.first_p50_ms,
        "stream32",
        f"added {_ms(added_first)} ms",
        "added ≤ 2 ms p50",
        added_first <= 2,
    )
    table.add(stream, "first chunk p99 (ms)", lambda s: s.first_p99_ms, "stream32")
    table.add(stream, "[DONE] p50 (ms)", lambda s: s.p50_ms, "stream32")

    opened = f"{config.open_streams:,} open streams, slow upstream"
    rss = _median(results.figures.get(("open", f"{PROXY}:rss"), []))
    errors = sum(s.errors for s in table.samples("open", PROXY))

    def memory(label: str) -> str:
        rss_runs = results.figures.get(("open", f"{label}:rss"), [])
        pss_runs = results.figures.get(("open", f"{label}:pss"), [])
        return f"{_median(rss_runs):.0f} / {_median(pss_runs):.0f}" if rss_runs else "n/a"

    pss = _median(results.figures.get(("open", f"{PROXY}:pss"), []))
    table.rows.append(
        Row(
            opened,
            "peak RSS / PSS, whole process tree (MiB)",
            "n/a",
            memory(PROXY),
            memory(LITELLM),
            f"PSS {pss:.0f} MiB (shared pages once)" + (f", {errors} err" if errors else ""),
            "≤ 150 MiB (RSS), 0 errors",
            table.verdict(rss <= 150 and errors == 0),
        )
    )
    table.add(opened, "first chunk p50 (ms)", lambda s: s.first_p50_ms, "open")
    table.add(opened, "first chunk p99 (ms)", lambda s: s.first_p99_ms, "open")
    table.add(opened, "[DONE] p99 (ms)", lambda s: s.p99_ms, "open")

    seq = f"{config.sequential:,} sequential (sync and stream alternately)"
    rss_at = results.figures.get(("sequential", "rss"), [])
    fds_at = results.figures.get(("sequential", "fds"), [])
    seq_errors = sum(s.errors for s in table.samples("sequential", PROXY))
    marks = " / ".join(f"{n:,}" for n in (config.sequential // 10, config.sequential // 2, config.sequential))
    grew = rss_at[-1] - rss_at[0] if rss_at else float("nan")
    table.rows.append(
        Row(
            seq,
            f"RSS (MiB) after {marks}",
            "n/a",
            " / ".join(f"{v:.1f}" for v in rss_at),
            "n/a",
            f"{grew:+.1f} MiB" + (f", {seq_errors} err" if seq_errors else ""),
            "growth ≤ 2 MiB after warm-up",
            table.verdict(grew <= 2 and seq_errors == 0),
        )
    )
    fd_growth = fds_at[-1] - fds_at[0] if fds_at else 0
    table.rows.append(
        Row(
            seq,
            f"open files after {marks}",
            "n/a",
            " / ".join(f"{v:.0f}" for v in fds_at),
            "n/a",
            f"{fd_growth:+.0f}",
            "no growth",
            table.verdict(fd_growth <= 0),
        )
    )
    _siege(table, config, results)
    return table.rows


def _siege(table: Table, config: Config, results: Results) -> None:
    """Whether /health and sync turns kept answering under the siege, how fast, and the memory it took."""

    def figure(name: str) -> float:
        return _median(results.figures.get(("siege", name), []))

    scenario = (
        f"siege: {config.siege_idle:,} idle connections + {config.siege_stalled} stalled streams, "
        f"{config.siege_seconds:g} s"
    )
    for probe, what in (("health", "GET /health"), ("sync", "sync turn")):
        asked, answered = figure(f"{probe}:asked"), figure(f"{probe}:answered")
        latency = " / ".join(_ms(figure(f"{probe}:{q}")) for q in ("p50", "p99", "max"))
        table.rows.append(
            Row(
                scenario,
                f"{what} on a new connection: answered; p50 / p99 / max (ms)",
                "n/a",
                f"{answered:.0f} of {asked:.0f}; {latency}",
                "n/a",
                "",
                "every one answered",
                table.verdict(asked > 0 and answered == asked),
            )
        )
    refused = f"{figure('idle_refused'):.0f} idle and {figure('stalled_refused'):.0f} stalled not opened"
    table.rows.append(
        Row(
            scenario,
            "RSS before / peak (MiB); idle connections closed during the hold",
            "n/a",
            f"{figure('rss_before'):.0f} / {figure('rss'):.0f}; {figure('idle_closed'):.0f}",
            "n/a",
            refused,
            "",
            "",
        )
    )


def markdown(rows: list[Row]) -> str:
    head = [
        "scenario",
        "metric",
        "direct (fake Letta)",
        "proxy",
        "LiteLLM proxy",
        "proxy vs",
        "target",
        "verdict",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    row.scenario,
                    row.metric,
                    row.direct,
                    row.proxy,
                    row.litellm,
                    row.versus,
                    row.target,
                    row.verdict,
                ]
            )
            + " |"
        )
    return "\n".join(lines)
