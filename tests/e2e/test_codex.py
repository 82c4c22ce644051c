"""End to end: Codex CLI (`@openai/codex` from npm, which ships its binary) runs `codex exec` to a final
answer through /v1/responses, in front of a real Letta, with the provider entry the README shows; and
runs the command the agent calls with Codex's own `exec_command` tool, whose output the agent then reads.

Codex only speaks the Responses API, streamed. It runs with HOME in a temporary directory (its config
and session files go there), no network beyond the proxy on loopback, and its retries off, so a failed
turn is never sent to the agent twice. `.ci/run` installs it into `.codex-cli/`; elsewhere set
`CODEX_BIN`. Without it the test skips, saying how to install it, unless PROXY_E2E_REQUIRED=1.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from letta_client import Letta
from letta_client.types import AgentState

from tests.e2e.letta_history import runs, user_texts
from tests.required import unavailable

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CODEX = Path(os.environ.get("CODEX_BIN", PROJECT_ROOT / ".codex-cli" / "node_modules" / ".bin" / "codex"))
CONFIG = """\
model = "{agent}"
model_provider = "letta"

[model_providers.letta]
name = "Letta via letta-openai-proxy"
base_url = "{proxy}/v1"
env_key = "LETTA_PROXY_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""


@pytest.fixture(scope="session")
def codex() -> Path:
    if not CODEX.exists():
        reason = f"no Codex CLI at {CODEX}: `npm install --prefix .codex-cli @openai/codex`, or set CODEX_BIN"
        unavailable(reason)
    return CODEX


RunCodex = Callable[[str, str, str], str]


@pytest.fixture
def run_codex(codex: Path, proxy_url: str, api_key: str, tmp_path: Path) -> RunCodex:
    """`run_codex(agent, prompt, extra_config)`: `codex exec` in a home and work directory of its own,
    configured as the README says (plus `extra_config` at the top); its last message."""

    def run(agent: str, prompt: str, extra_config: str = "") -> str:
        home, work = tmp_path / "home", tmp_path / "work"
        (home / ".codex").mkdir(parents=True)
        work.mkdir()
        config = extra_config + CONFIG.format(agent=agent, proxy=proxy_url)
        (home / ".codex" / "config.toml").write_text(config)
        last = tmp_path / "last-message.txt"
        done = subprocess.run(
            [str(codex), "exec", "--skip-git-repo-check", "--output-last-message", str(last), prompt],
            cwd=work,
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(home), "LETTA_PROXY_API_KEY": api_key},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, f"codex exec failed ({done.returncode}):\n{done.stderr[-4000:]}"
        return last.read_text()

    return run


def test_codex_exec_reaches_a_final_answer(
    run_codex: RunCodex, make_agent: Callable[[], AgentState], letta: Letta
) -> None:
    """One streamed turn, its <environment_context> item and prompt joined into one Letta user message,
    answered by the agent; Codex prints that answer as its last message."""
    agent = make_agent()
    prompt = f"say hello {uuid.uuid4().hex[:8]}"
    answer = run_codex(agent.name, prompt, "")
    assert answer.startswith("Echo: ") and answer.rstrip().endswith(prompt), answer
    [sent] = user_texts(letta, agent.id)
    assert "<environment_context>" in sent and sent.endswith(prompt)  # one message: context, then prompt
    assert len(runs(letta, agent.id)) == 1  # one request, no retry


def test_codex_runs_the_command_the_agent_calls_and_the_agent_reads_its_output(
    run_codex: RunCodex, make_agent: Callable[[], AgentState], letta: Letta
) -> None:
    """A client tool round trip with a real client: the agent calls Codex's own `exec_command`, which
    reaches Codex as a function_call; Codex runs it and sends its output back, which reaches the agent
    as the tool's return, and the agent's answer quotes it. (Without its <environment_context> item, so
    that the fake LLM reads the prompt as it was typed.)"""
    agent = make_agent()
    marker = f"tool-ok-{uuid.uuid4().hex[:8]}"
    prompt = f'/call exec_command {{"cmd": "echo {marker}"}}'
    answer = run_codex(agent.name, prompt, "include_environment_context = false\n")
    asked, _, returned = answer.partition(" | exec_command returned: ")
    assert asked == f"Echo: {prompt}", answer
    assert "exited with code 0" in returned and f"Output:\\n{marker}" in returned, answer  # echo's, in JSON
    assert user_texts(letta, agent.id) == [prompt]  # the tool's output went back as its return, not as a turn
    assert len(runs(letta, agent.id)) == 2  # the call, then the answer to its output: no retry
