"""LiteLLM's proxy server, the peer a user would pick instead, in its own venv (never the project's).

Pinned to 1.106.2: the newest `litellm[proxy]` whose extra resolves from PyPI here (1.108.x needs a newer
certifi than is published, 1.109.x a `litellm-proxy-extras` that is not; 1.107.0 was a compromised release).
It runs as a user would start it: `litellm --config`, one uvicorn worker (like the proxy's one Granian
worker), no database, the fake upstream as an OpenAI endpoint.
"""

import os
import subprocess
from pathlib import Path

VENV = Path(__file__).with_name(".venv-litellm")
REQUIREMENT = "litellm[proxy]==1.106.2"
MASTER_KEY = "sk-bench-litellm"


def install() -> Path:
    """The `litellm` command, installing it into bench/.venv-litellm first if needed (uv, PyPI only)."""
    command = VENV / "bin" / "litellm"
    if command.exists():
        return command
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    subprocess.run(["uv", "venv", "-q", "--python", "3.11", str(VENV)], env=env, check=True)
    subprocess.run(
        ["uv", "pip", "install", "-q", "--python", str(VENV / "bin" / "python"), REQUIREMENT],
        env=env,
        check=True,
        timeout=900,
    )
    return command


def config(path: Path, upstream: str, models: list[str]) -> Path:
    """Each fake profile as a LiteLLM model of the same name, forwarded to the fake's OpenAI route."""
    lines = ["model_list:"]
    for model in models:
        lines += [
            f"  - model_name: {model}",
            "    litellm_params:",
            f"      model: openai/{model}",
            f"      api_base: {upstream}/v1",
            "      api_key: sk-fake",
        ]
    lines += ["general_settings:", f"  master_key: {MASTER_KEY}", "litellm_settings:", "  telemetry: false"]
    path.write_text("\n".join(lines) + "\n")
    return path


def argv(command: Path, config_path: Path, port: int) -> list[str]:
    return [
        str(command),
        "--config",
        str(config_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]


def environment() -> dict[str, str]:
    """Offline: the bundled cost map, no telemetry, quiet logs."""
    return {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "NO_DOCS": "True",
        "PYTHONUNBUFFERED": "1",
    }
