"""`python -m proxy` and the `letta-openai-proxy` command: check the settings, then serve with Granian.

Granian rather than uvicorn because it served this app faster (wrk, 32 connections, cached `/v1/models`,
one worker). One worker: its embedded server, in this process, rather than its usual one, which adds a
leader process that only supervises (its memory: bench/README.md). More workers (PROXY_WORKERS): that
usual server, whose leader is then worth its memory: it shares one listening socket among the workers,
restarts a crashed one, and on SIGTERM stops them all with the same grace. Each worker builds its app
from the environment (`proxy.app:from_environment`).
"""

import argparse
import asyncio
import logging
import logging.config
import os
import resource
import signal
import sys
from typing import Any

import uvloop
from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.server import Server as WorkersServer
from granian.server.embed import Server
from pydantic import ValidationError

from proxy.app import create_app
from proxy.auth import Client, load_clients
from proxy.settings import Settings, describe_error

log = logging.getLogger("proxy")
SPARE_FILES = 256  # beyond two per connection (the client's and its Letta one): logs, sockets, the venv


# The HTTP clients under letta-client log whole requests at debug level (letta-client its request
# options, JSON body included): pinned at warning whatever PROXY_LOG_LEVEL (or LETTA_LOG) says, so that
# message text never reaches the log.
QUIET_LOGGERS = ("letta_client", "httpx", "httpcore", "httpx_aiohttp", "aiohttp")


class NotExperimental(logging.Filter):
    """Granian calls its embedded server experimental at every start; the proxy chose it knowingly
    (module docstring), so operators are spared the line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Embedded server is experimental")


def logging_config(level: str, form: str) -> dict[str, Any]:
    """One format for the proxy's and Granian's lines; the HTTP clients' per-request lines muted."""
    formatter = (
        {"()": "proxy.observe.JsonFormatter"}
        if form == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    handler = {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "filters": {"not_experimental": {"()": "proxy.__main__.NotExperimental"}},
        "handlers": {"stderr": handler},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "_granian": {"level": level.upper(), "filters": ["not_experimental"]},
            **{name: {"level": "WARNING"} for name in QUIET_LOGGERS},
        },
    }


def usage() -> argparse.ArgumentParser:
    """`--help` lists every setting, from the settings themselves, so it cannot drift from them."""
    lines = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "(none)" if default in (None, []) else default
        lines.append(f"  {name.upper():<30} {field.description} [default: {shown}]")
    return argparse.ArgumentParser(
        prog="letta-openai-proxy",
        description="An OpenAI-compatible gateway to the agents of a Letta server. It is configured by "
        "environment variables only (a .env file in the working directory is read too):",
        epilog="\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def raise_file_limit(connections: int) -> None:
    """Lifts the soft open-file limit (often 1,024) so that PROXY_MAX_CONNECTIONS can be reached: past the
    limit, Granian's accept fails and retries at once instead of queueing the connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * connections + SPARE_FILES
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    if limit < wanted:
        log.warning(
            "the open-file limit (%d) is short for PROXY_MAX_CONNECTIONS=%d: lower it or raise the limit",
            limit,
            connections,
        )


def connection_policy(settings: Settings) -> dict[str, Any]:
    """Granian's own settings for how many connections are served and how long a silent one is kept.

    `backpressure` is Granian's cap on open connections (it accepts no more until one closes; by default
    it equals the listen backlog). HTTP/1 only, because in Granian's `auto` mode hyper-util first waits,
    without any deadline, for bytes telling HTTP/1 from HTTP/2: a connection that never sends a byte was
    then held forever. In HTTP/1 mode hyper's `header_read_timeout` runs from the connection's start and
    again while a kept-alive connection waits for its next request, so it is also the idle deadline.
    """
    return {
        "http": HTTPModes.http1,
        "backlog": 1024,  # the listen queue; the embedded server's 128 is short for 1,000 clients at once
        "backpressure": settings.proxy_max_connections,
        "http1_settings": HTTP1Settings(
            header_read_timeout=round(settings.proxy_header_timeout_seconds * 1000)
        ),
    }


def server_options(settings: Settings, log_config: dict[str, Any]) -> dict[str, Any]:
    """What one worker or several are served with alike: the address, the logs, the connection policy."""
    return {
        "interface": Interfaces.ASGI,
        "address": settings.proxy_host,
        "port": settings.proxy_port,
        "websockets": False,
        "log_level": settings.proxy_log_level,
        "log_dictconfig": log_config,
        **connection_policy(settings),
    }


async def serve(settings: Settings, log_config: dict[str, Any], clients: list[Client]) -> None:
    """Serves until SIGTERM or SIGINT; then new connections are refused and open requests get the grace."""
    server = Server(create_app(settings, clients), **server_options(settings, log_config))
    loop = asyncio.get_running_loop()

    def stop() -> None:
        server.stop()  # Granian stops accepting, waits for the open connections, then runs the app's shutdown
        loop.call_later(settings.proxy_shutdown_grace_seconds, cut)

    def cut() -> None:
        """Exits, as Granian's usual server kills its worker: cancelling each request would log a trace."""
        log.warning("open requests cut after the %d s grace", settings.proxy_shutdown_grace_seconds)
        logging.shutdown()
        os._exit(0)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    await server.serve()


def serve_workers(settings: Settings, log_config: dict[str, Any]) -> None:
    """N worker processes, each its own app and event loop, behind one socket; blocks until stopped."""
    if not settings.proxy_redis_url:
        log.warning(
            "PROXY_WORKERS=%d without PROXY_REDIS_URL: each worker queues an agent's turns on its own, so "
            "two turns for one agent may reach it at once; set PROXY_REDIS_URL",
            settings.proxy_workers,
        )
    options = server_options(settings, log_config)
    options["backpressure"] = max(1, settings.proxy_max_connections // settings.proxy_workers)  # per worker
    WorkersServer(
        "proxy.app:from_environment",
        factory=True,
        workers=settings.proxy_workers,
        respawn_failed_workers=True,
        workers_kill_timeout=max(1, settings.proxy_shutdown_grace_seconds),  # 0 would mean "wait forever"
        **options,
    ).serve()


def main() -> None:
    usage().parse_args()
    try:
        settings = Settings()
    except ValidationError as error:
        sys.exit(describe_error(error))
    config = logging_config(settings.proxy_log_level, settings.proxy_log_format)
    logging.config.dictConfig(config)
    clients = load_clients(settings)  # here, so that a key problem stops start-up before anything else
    raise_file_limit(settings.proxy_max_connections)
    if settings.proxy_workers > 1:
        serve_workers(settings, config)
    else:
        uvloop.run(serve(settings, config, clients))


if __name__ == "__main__":
    main()
