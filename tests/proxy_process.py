"""The proxy as a real process (`python -m proxy`) on a free loopback port, for end-to-end tests."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ProxyProcess:
    """A server the tests started as a process (the proxy, or Open WebUI), and its log file."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, then a kill if it does not exit in time; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return self.process.returncode


@contextmanager
def running_proxy(tmp: Path, key: str, **env: str) -> Iterator[ProxyProcess]:
    """Starts the proxy with `env` on top of ours, waits until it answers with `key`, stops it at the end."""
    port = free_port()
    settings = {
        "PROXY_HOST": "127.0.0.1",
        "PROXY_PORT": str(port),
        "PROXY_API_KEYS": key,
        "PROXY_API_KEY_FILE": str(tmp / "proxy-api-key.json"),
        "PROXY_LOG_LEVEL": "info",
        **env,
    }
    log_path = tmp / f"proxy-{port}.log"
    with log_path.open("wb") as log:  # a file, not a pipe: an unread pipe would block the proxy once full
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy"],
            cwd=PROJECT_ROOT,
            env={**os.environ, **settings},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        proxy = ProxyProcess(f"http://127.0.0.1:{port}", process, log_path)
        try:
            wait_until_healthy(proxy, "proxy", READY_TIMEOUT)
            yield proxy
        finally:
            proxy.stop()


def wait_until_healthy(server: ProxyProcess, name: str, timeout: float) -> None:
    """Returns once `server` answers /health; an error with the end of its log if it exits or stays silent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{name} exited with {server.process.returncode}:\n{_tail(server)}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{name} not ready on {server.url} after {timeout:.0f} s:\n{_tail(server)}")


def _tail(server: ProxyProcess, lines: int = 60) -> str:
    return "\n".join(server.output().splitlines()[-lines:]) + f"\n(all of it: {server.log_path})"
