"""Open WebUI for the browser suite: installed, pinned, in a venv of its own, and run as a real process.

`uv run python -m tests.e2e.openwebui.openwebui` installs it (CI does, in .ci/run): Debian's Chromium,
then a venv outside the project with the CPU build of torch first (else Open WebUI's dependencies pull a
multi-GB CUDA one) and Open WebUI itself, by uv (pip takes minutes longer). Run again, it only checks.
The suite then starts Open WebUI offline, with no login, its data in a temporary directory, and the proxy
as its one OpenAI connection.
"""

import os
import re
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.proxy_process import ProxyProcess, free_port, wait_until_healthy

VERSION = "0.12.4"  # its task prompts are tests/fixtures/openwebui/v0.12.4.json; its page, the selectors here
TORCH = "2.13.0"
HOME = Path(os.environ.get("OPENWEBUI_HOME") or Path(tempfile.gettempdir()) / "letta-proxy-openwebui")
VENV = HOME / "venv"
CHROMIUM = Path("/usr/lib/chromium/chromium")  # Debian's browser itself, not its /usr/bin wrapper script
START_TIMEOUT = 300.0  # a first start migrates its database: about a minute on two busy cores

_DIST = re.compile(r"^open_webui-(.+)\.dist-info$")
_IGNORED_INDEX = re.compile(r"^WARNING: Location '.*' is ignored")


def installed_version() -> str | None:
    """The Open WebUI version in the suite's venv, or None when it has none."""
    for site in VENV.glob("lib/python3*/site-packages"):
        for entry in site.iterdir():
            if match := _DIST.match(entry.name):
                return match[1]
    return None


def missing() -> str | None:
    """Why the suite cannot run here, or None when it can."""
    if (version := installed_version()) != VERSION:
        found = f"Open WebUI {version}" if version else "no Open WebUI"
        return f"{found} in {VENV}, {VERSION} is needed: run `uv run python -m tests.e2e.openwebui.openwebui`"
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM}: `apt-get install chromium` (Debian)"
    return None


def install() -> None:
    """Everything the suite needs, from nothing; quick when it is all there."""
    if not CHROMIUM.exists():
        _run(["apt-get", "update", "-qq"])
        _run(["apt-get", "install", "-y", "-qq", "chromium"], DEBIAN_FRONTEND="noninteractive")
    if installed_version() != VERSION:
        HOME.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "venv", "--clear", str(VENV)])
        python = str(VENV / "bin" / "python")
        _run([python, "-m", "pip", "install", "-q", f"torch=={TORCH}"])  # pip: it finds the local CPU wheel
        _run(["uv", "pip", "install", "-q", "--python", python, f"open-webui=={VERSION}"])  # 20 s; pip: 8 min
    print(f"Open WebUI {installed_version()} in {VENV}; Chromium at {CHROMIUM}")


@contextmanager
def running_openwebui(data: Path, openai_url: str, api_key: str, **overrides: str) -> Iterator[str]:
    """Open WebUI on a free loopback port, with `openai_url` as its connection (and `overrides` on top of
    the suite's environment, e.g. a login); its base URL."""
    port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "DATA_DIR": str(data),
        "WEBUI_AUTH": "False",  # one user, an admin, signed in by the page itself
        "WEBUI_SECRET_KEY": secrets.token_hex(16),
        "OPENAI_API_BASE_URL": openai_url,
        "OPENAI_API_KEY": api_key,
        "ENABLE_OLLAMA_API": "false",
        "ENABLE_FORWARD_USER_INFO_HEADERS": "true",  # X-OpenWebUI-Chat-Id and -User-Name to the proxy
        "OFFLINE_MODE": "true",
        "HF_HUB_OFFLINE": "1",
        "RAG_EMBEDDING_ENGINE": "openai",  # no local embedding model to load (none can be downloaded)
        "ENABLE_VERSION_UPDATE_CHECK": "false",
        "ANONYMIZED_TELEMETRY": "false",
        "DO_NOT_TRACK": "true",
        "SCARF_NO_ANALYTICS": "true",
        **overrides,
    }
    log_path = data.parent / f"openwebui-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(VENV / "bin" / "open-webui"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=data,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        server = ProxyProcess(f"http://127.0.0.1:{port}", process, log_path)
        try:
            wait_until_healthy(server, "Open WebUI", START_TIMEOUT)
            yield server.url
        finally:
            server.stop(timeout=20)


def _run(command: list[str], **env: str) -> None:
    """Runs a step, its output shown less pip's notes on this machine's unusable local index pages."""
    print("+", " ".join(command), flush=True)
    with subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as step:
        assert step.stdout is not None
        for line in step.stdout:
            if not _IGNORED_INDEX.match(line):
                print(line, end="", flush=True)
    if step.returncode:
        raise subprocess.CalledProcessError(step.returncode, command)


if __name__ == "__main__":
    install()
