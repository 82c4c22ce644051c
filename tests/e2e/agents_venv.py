"""The OpenAI Agents SDK, run in a venv of its own: it needs openai>=3, and LiteLLM pins openai 2.

`.ci/run` makes it (`.venv-agents` at the project root, or `AGENTS_VENV`); without it the tests that need
it skip, saying how to make it, except under PROXY_E2E_REQUIRED=1, where that is a failure. A test runs a
script under it, handing it the proxy's address, key and agent in the environment, and reads the one
JSON line the script prints last.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.required import unavailable

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("AGENTS_VENV", PROJECT_ROOT / ".venv-agents"))
SCRIPT_TIMEOUT = 180.0


def agents_python() -> Path:
    """The venv's interpreter, once it is known to import the Agents SDK."""
    python = VENV / "bin" / "python"
    found = (
        python.exists()
        and subprocess.run([python, "-c", "import agents"], capture_output=True).returncode == 0
    )
    if not found:
        reason = (
            f"no OpenAI Agents SDK venv at {VENV}: make it with "
            "`uv venv .venv-agents && VIRTUAL_ENV=.venv-agents uv pip install openai-agents`"
        )
        unavailable(reason)
    return python


def run_script(script: Path, *args: str, **env: str) -> Any:
    """Runs `script` under the Agents SDK venv with `env` added; its last stdout line, as JSON."""
    done = subprocess.run(
        [agents_python(), str(script), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
    )
    assert done.returncode == 0, f"{script.name} failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])
