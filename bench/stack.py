"""The servers under test, started as users start them, on free loopback ports: the fake Letta, the proxy
(`python -m proxy`) and LiteLLM's proxy. `Servers` stops them all when its block ends.
"""

import os
import sys
import time
from pathlib import Path

from bench import litellm, load, wire
from bench.processes import Server, Servers, free_port, wait_ready
from bench.scenarios import Endpoint

ROOT = Path(__file__).resolve().parents[1]
PROXY_KEY = "sk-bench-proxy"


STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[bench {time.monotonic() - STARTED:5.1f} s] {message}", file=sys.stderr, flush=True)


def start_fake(servers: Servers, profiles: list[wire.Profile]) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "bench.fake_letta", "--port", str(port)]
    for profile in profiles:
        argv += ["--profile", profile.spec]
    fake = servers.start("fake-letta", argv, port, cwd=ROOT)
    wait_ready(fake, "/v1/health/", 20)
    return fake


def start_proxy(servers: Servers, fake: Server, tmp: Path, name: str = "proxy", **extra: str) -> Server:
    """`python -m proxy` against the fake; `extra` settings on top (PROXY_WORKERS, PROXY_REDIS_URL)."""
    port = free_port()
    env = {
        **os.environ,
        "LETTA_BASE_URL": fake.url,
        "PROXY_HOST": "127.0.0.1",
        "PROXY_PORT": str(port),
        "PROXY_API_KEYS": PROXY_KEY,
        "PROXY_API_KEY_FILE": str(tmp / "proxy-key.json"),
        "PROXY_LOG_LEVEL": "warning",
        "PROXY_AGENT_CACHE_SECONDS": "60",
        **extra,
    }
    proxy = servers.start(name, [sys.executable, "-m", "proxy"], port, cwd=ROOT, env=env)
    wait_ready(proxy, "/v1/models", 60, {"Authorization": f"Bearer {PROXY_KEY}"})
    return proxy


def start_litellm(servers: Servers, fake: Server, profiles: list[wire.Profile], tmp: Path) -> Server:
    say(
        f"installing {litellm.REQUIREMENT} into {litellm.VENV} (once)"
        if not litellm.VENV.exists()
        else "starting LiteLLM (about 30 s)"
    )
    command = litellm.install()
    config = litellm.config(tmp / "litellm.yaml", fake.url, [p.name for p in profiles])
    port = free_port()
    server = servers.start(
        "litellm", litellm.argv(command, config, port), port, cwd=tmp, env=litellm.environment()
    )
    wait_ready(server, "/health/liveliness", 300)
    return server


def warm_up(targets: list[Endpoint], profile: wire.Profile, requests: int = 64) -> None:
    """A few requests each, so that imports, pools and caches are filled before anything is measured."""
    for target in targets:
        bodies = [target.body(profile, False), target.body(profile, True)]
        load.client(
            target.url(profile), bodies, target.key, 8, requests=requests, seconds=60, agents=profile.agents
        )
