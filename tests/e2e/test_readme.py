"""README's first commands, run as a newcomer runs them: on a fresh clone, against the real Letta.

The start command is the README's first line, verbatim; the steps of "The first ten minutes" are its
shell blocks, verbatim but for the model handle of the first agent (this Letta offers only the fake LLM).
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from letta_client import Letta

from tests.e2e.conftest import AGENT_MODEL
from tests.proxy_process import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()
README_PORT = 8080  # the port the README's commands use
START_TIMEOUT = 180.0  # a fresh clone installs its runtime packages first (from uv's cache in CI)


def _shell_blocks(markdown: str) -> list[str]:
    """The ```sh blocks, in order, with their continuation lines joined."""
    return [block.replace("\\\n", " ") for block in re.findall(r"```sh\n(.*?)```", markdown, re.S)]


def _first_ten_minutes() -> str:
    return README.split("## The first ten minutes", 1)[1].split("\n## ", 1)[0]


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def fresh_clone(tmp_path: Path) -> Path:
    """A clone of the committed project, as a newcomer gets it: no venv, no key file."""
    clone = tmp_path / "letta-openai-proxy"
    subprocess.run(["git", "clone", "-q", str(PROJECT_ROOT), str(clone)], check=True, timeout=120)
    return clone


@pytest.fixture
def started(fresh_clone: Path, letta_url: str) -> Iterator[Path]:
    """The README's start command, verbatim, in the clone; stopped (its whole group) at the end."""
    if not _port_free(README_PORT):
        pytest.fail(f"port {README_PORT}, which the README's commands use, is taken", pytrace=False)
    start = README.split("```sh\n", 1)[1].splitlines()[0].split("#")[0].strip()
    assert "letta-openai-proxy" in start and "--no-dev" in start
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXY_", "LETTA_", "VIRTUAL_ENV"))}
    log = (fresh_clone / "proxy.log").open("wb")
    process = subprocess.Popen(
        ["bash", "-c", start],
        cwd=fresh_clone,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert process.poll() is None, (fresh_clone / "proxy.log").read_text()
            try:
                if httpx.get(f"http://localhost:{README_PORT}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("the README's start command did not serve in time", pytrace=False)
        yield fresh_clone
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def test_the_first_ten_minutes_work_verbatim(started: Path, letta: Letta) -> None:
    """Start, read the key, make a first agent, list models, one chat turn: each as README says."""
    assert shutil.which("curl"), "the README's steps use curl"
    key_step, agent_step, answer_step = _shell_blocks(_first_ten_minutes())
    name = f"readme-{uuid.uuid4().hex[:8]}"
    agent_step = agent_step.replace("openai/gpt-4o-mini", AGENT_MODEL).replace("support-bot", name)
    answer_step = answer_step.replace("support-bot", name)
    script = f"set -euo pipefail\n{key_step}\n{agent_step}\necho\n{answer_step}\n"
    done = subprocess.run(["bash", "-c", script], cwd=started, capture_output=True, text=True, timeout=120)
    for agent in letta.agents.list(name=name):
        letta.agents.delete(agent.id)
    assert done.returncode == 0, done.stderr
    assert f'"id":"{name}"' in done.stdout.replace(" ", "")  # the new agent is listed as a model
    assert '"content":"Echo: hi"' in done.stdout  # the agent's answer, through the proxy
    assert "sk-letta-" not in (started / "proxy.log").read_text()  # the generated key is never logged
