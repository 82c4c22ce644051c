"""__main__.py: the command a person runs first: --help, and what start-up says."""

import resource
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from proxy.__main__ import SPARE_FILES, raise_file_limit
from proxy.settings import Settings
from tests.conftest import KEY
from tests.proxy_process import PROJECT_ROOT, free_port, running_proxy

pytestmark = pytest.mark.slow  # real processes; outside the fast loop


def test_help_lists_every_setting(tmp_path: Path) -> None:
    """`--help` names each environment variable with its meaning, and starts nothing."""
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert [name for name in Settings.model_fields if name.upper() not in done.stdout] == []


def test_start_up_says_where_it_listens_which_letta_and_whether_it_answered(tmp_path: Path) -> None:
    """The address once bound, the Letta URL and why it does not answer (nothing there), each once, in
    words; no timeout named for a refused connection, no retry lines, no "experimental" warning."""
    letta = f"http://127.0.0.1:{free_port()}"
    with running_proxy(tmp_path, KEY, LETTA_BASE_URL=letta) as proxy:
        said = f"Letta at {letta} does not answer yet: The Letta server is unreachable."
        deadline = time.monotonic() + 10
        while said not in proxy.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        output = proxy.output()
    assert output.count(said) == 1
    assert output.count(f"Listening at: {proxy.url}") == 1
    for noise in ("Timeout", "Retrying", "experimental", "Traceback"):
        assert noise not in output, noise


def test_it_serves_from_one_process(tmp_path: Path) -> None:
    """No supervising parent and no worker child: a second process would cost its memory for nothing."""
    with running_proxy(tmp_path, KEY, LETTA_BASE_URL=f"http://127.0.0.1:{free_port()}") as proxy:
        pid = proxy.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert children == []


def test_start_up_names_the_generated_key_file_but_not_the_key(tmp_path: Path) -> None:
    """Without PROXY_API_KEYS the log points at the key file; the key itself never appears."""
    with running_proxy(
        tmp_path, KEY, PROXY_API_KEYS="", LETTA_BASE_URL=f"http://127.0.0.1:{free_port()}"
    ) as proxy:
        output = proxy.output()
    key_file = tmp_path / "proxy-api-key.json"
    assert output.count(str(key_file)) == 1  # said once: the keys are loaded once
    assert key_file.read_text().split('"')[3] not in output


def test_the_open_file_limit_is_lifted_for_the_connection_cap(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two descriptors per connection plus spare; up to the hard limit, with a warning when that is short."""
    limits = {"soft": 1024, "hard": 5000}
    monkeypatch.setattr(resource, "getrlimit", lambda _: (limits["soft"], limits["hard"]))
    monkeypatch.setattr(resource, "setrlimit", lambda _, value: limits.update(soft=value[0]))
    raise_file_limit(1000)
    assert limits["soft"] == 2 * 1000 + SPARE_FILES and not caplog.records
    raise_file_limit(4096)
    assert limits["soft"] == 5000
    assert "PROXY_MAX_CONNECTIONS=4096" in caplog.text


def test_workers_share_the_port_and_stop_on_sigterm(tmp_path: Path) -> None:
    """PROXY_WORKERS=2: two worker processes serve the one port (each its own app), start-up warns that
    without Redis their turn queues are separate, and SIGTERM stops them all with exit code 0."""
    letta = f"http://127.0.0.1:{free_port()}"
    with running_proxy(tmp_path, KEY, PROXY_WORKERS="2", LETTA_BASE_URL=letta) as proxy:
        for _ in range(4):
            assert httpx.get(f"{proxy.url}/health", timeout=5).status_code == 200
        pid = proxy.process.pid
        workers = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()  # forked: one per worker
        assert proxy.stop() == 0
    log = proxy.output()
    assert "Started worker-1" in log and "Started worker-2" in log
    assert "PROXY_WORKERS=2 without PROXY_REDIS_URL" in log
    assert len(workers) == 2
