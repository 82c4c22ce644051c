"""A real, throwaway `redis-server` on a free loopback port, for the Redis session-store tests."""

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tests.proxy_process import free_port
from tests.required import unavailable

READY_TIMEOUT = 10.0
START_ATTEMPTS = 3  # the free port may be taken between choosing it and redis-server binding it


def redis_server_binary() -> str:
    """The binary's path; a skip saying how to get it, or a failure where it is required (CI)."""
    binary = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)), None
    )
    if binary:
        return binary
    unavailable("redis-server not installed; apt-get install redis-server")


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    url: str
    process: subprocess.Popen[bytes]
    tmp: Path

    def start_again(self) -> None:
        """A restart on the same port, empty (no persistence), as a crashed and restarted Redis."""
        self.stop()
        port = str(urlsplit(self.url).port)
        with (self.tmp / f"redis-{port}-again.log").open("wb") as out:
            self.process = subprocess.Popen(
                [redis_server_binary(), *_options(int(port), self.tmp)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while not _pings(int(port)):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server did not start again on port {port}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then a kill if it lingers; safe to call twice (tests stop it early to see failures)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _options(port: int, tmp: Path) -> list[str]:
    """Loopback only, nothing written to disk: a scratch server no one else can reach."""
    return ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)]


@contextmanager
def running_redis(tmp: Path) -> Iterator[RedisServer]:
    """Starts redis-server (no persistence, loopback only), yields it once it answers PING, stops it."""
    binary = redis_server_binary()
    for attempt in range(START_ATTEMPTS):
        port = free_port()
        log_path = tmp / f"redis-{port}.log"
        with log_path.open("wb") as log:  # a file, not a pipe, which would block the server once full
            process = subprocess.Popen([binary, *_options(port, tmp)], stdout=log, stderr=subprocess.STDOUT)
        server = RedisServer(f"redis://127.0.0.1:{port}/0", process, tmp)
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while process.poll() is None and time.monotonic() < deadline and not _pings(port):
                time.sleep(0.05)
            if process.poll() is None and _pings(port):
                yield server
                return
        finally:
            server.stop()
        if attempt == START_ATTEMPTS - 1:
            log_text = log_path.read_text(errors="replace")
            raise RuntimeError(f"redis-server did not start on port {port}:\n{log_text}")
