"""The processes a bench run starts, and what it reads about them: RSS and open files of a process tree.

Each server runs in its own session (process group), so stopping it stops its workers too; `Servers`
stops every one it started when its `with` block ends, however it ends.
"""

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    """A loopback port free right now (the OS picks it, so it never clashes with a real Letta)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Servers(AbstractContextManager["Servers"]):
    """Starts servers; on exit stops them all (SIGTERM to the group, SIGKILL if they linger)."""

    log_dir: Path
    started: list[Server] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Server:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        server = Server(name, process, port, log)
        self.started.append(server)
        return server

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for server in reversed(self.started):
            stop(server.process)
        self.started.clear()


def stop(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
    try:  # workers left behind by a leader that died first
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_ready(server: Server, path: str, timeout: float, headers: dict[str, str] | None = None) -> None:
    """Polls `path` until it answers 200; fails with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(server.url + path, headers=headers, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} not ready after {timeout:.0f} s:\n{server.log_tail()}")


def tree(pid: int) -> list[int]:
    """The process and all its descendants (Granian and uvicorn serve from child processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except OSError:
            pass
    return total / 2**20


def pss_mib(pids: list[int]) -> float:
    """Proportional set size: shared pages (a forked worker shares many with its leader) counted once."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def open_fds(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return total


class PeakRss(threading.Thread):
    """Samples a process tree's RSS and PSS every `period` seconds while a scenario runs; keeps the peaks."""

    def __init__(self, pid: int, period: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pids = tree(pid)
        self.period = period
        self.peak = rss_mib(self.pids)
        self.peak_pss = pss_mib(self.pids)
        self._finished = threading.Event()

    def run(self) -> None:
        while not self._finished.wait(self.period):
            self.peak = max(self.peak, rss_mib(self.pids))
            self.peak_pss = max(self.peak_pss, pss_mib(self.pids))

    def __enter__(self) -> "PeakRss":
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._finished.set()
        self.join()
        self.peak = max(self.peak, rss_mib(self.pids))


def _jiffies(pid: int) -> int:
    """CPU time of a process and of its children it has reaped (utime, stime, cutime, cstime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0
    return sum(int(value) for value in fields[11:15])


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far (its own, not its children's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_jiffies() -> tuple[int, int]:
    """Busy and stolen CPU time of the whole machine, from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split()[1:9]
    )
    return user + nice + system + irq + softirq, steal


class MachineLoad:
    """How much of the machine others used while the bench measured: their CPU is noise in every figure."""

    def __init__(self) -> None:
        self.others = 0.0
        self.steal = 0.0

    def _read(self) -> tuple[float, int, int, int]:
        busy, steal = _machine_jiffies()
        own = sum(_jiffies(pid) for pid in tree(os.getpid()))
        return time.monotonic(), busy, steal, own

    def __enter__(self) -> "MachineLoad":
        self._start = self._read()
        return self

    def __exit__(self, *_: object) -> None:
        end = self._read()
        capacity = (end[0] - self._start[0]) * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1)
        busy, steal, own = (end[i] - self._start[i] for i in (1, 2, 3))
        self.others = max(0.0, (busy - own) / capacity)
        self.steal = steal / capacity
