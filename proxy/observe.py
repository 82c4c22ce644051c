"""What happened to each request: a request id, one access-log line and Prometheus metrics.

An ASGI middleware, so that it sees every response, streams included, to its last byte. Handlers leave
the agent and the token counts in the request's state; nothing here reads bodies or message text.
"""

import json
import logging
import re
import time
import uuid
from collections.abc import MutableMapping
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

from proxy.turns import TurnQueue

access = logging.getLogger("proxy.access")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


# One set per process, in prometheus_client's default registry (beside its process metrics).
REQUESTS = Counter("proxy_requests", "Requests answered", ["route", "status", "model"])
LATENCY = Histogram(
    "proxy_request_seconds", "Time to the last byte of the answer", ["route"], buckets=_LATENCY_BUCKETS
)
FIRST_CHUNK = Histogram(
    "proxy_first_chunk_seconds", "Time to the first byte of a stream", ["model"], buckets=_LATENCY_BUCKETS
)
OPEN_STREAMS = Gauge("proxy_open_streams", "Streams being sent now")
UPSTREAM_FAILURES = Counter(
    "proxy_upstream_errors", "Failures of Letta or of the turn in it, by kind", ["kind"]
)
TURNS = Gauge("proxy_turns", "Turns of this process holding their agent, or waiting for it", ["state"])


def watch_turns(turns: TurnQueue) -> None:
    """The gauge reads the app's turn queue at each scrape (the last app made, in a test run)."""
    TURNS.labels("holding").set_function(lambda: turns.holding)
    TURNS.labels("waiting").set_function(lambda: turns.waiting)


def printable(text: str) -> str:
    """The text with every unprintable character escaped (`\\n`, `\\x1b`, `\\u2028`), so that a path
    sent as `/%0a...` cannot end the access line and forge the next one."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode() for char in text)


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def upstream_error(kind: str | None) -> None:
    UPSTREAM_FAILURES.labels(kind or "unknown").inc()


def request_id(scope: Scope) -> str:
    """The caller's X-Request-Id when it is a sane token, else a new one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _SAFE_REQUEST_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    """One JSON object per line: the message, its level and logger, and any `extra` fields."""

    _standard = frozenset(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in self._standard and k != "message"})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def observe(app: ASGIApp) -> ASGIApp:
    """Wraps an ASGI app: every HTTP request gets an id, a log line and its metrics."""

    async def observed(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = request_id(scope)
        state: MutableMapping[str, Any] = scope.setdefault("state", {})  # type: ignore[typeddict-item]
        state["request_id"] = rid
        status, streaming, first_byte = 500, False, None

        async def send_observed(message: Message) -> None:
            nonlocal status, streaming, first_byte
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message["headers"] = headers  # type: ignore[typeddict-unknown-key]
                streaming = any(
                    k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers
                )
                if streaming:
                    OPEN_STREAMS.inc()
            elif message["type"] == "http.response.body" and streaming and first_byte is None:
                first_byte = time.perf_counter() - started
            await send(message)

        try:
            await app(scope, receive, send_observed)
        finally:
            if streaming:
                OPEN_STREAMS.dec()
            _record(scope, state, status, time.perf_counter() - started, first_byte)

    return observed


def _record(
    scope: Scope, state: MutableMapping[str, Any], status: int, seconds: float, first_byte: float | None
) -> None:
    route = scope.get("path_template") or "unmatched"  # never the raw path: labels must stay few
    agent = state.get("agent")
    model = agent or "-"
    REQUESTS.labels(route, str(status), model).inc()
    LATENCY.labels(route).observe(seconds)
    if first_byte is not None:
        FIRST_CHUNK.labels(model).observe(first_byte)
    translator = state.get("translator")
    usage = translator.usage if translator is not None else None
    path = printable(scope["path"])
    access.info(
        "%s %s %s %.1fms agent=%s tokens=%s request_id=%s",
        scope["method"],
        path,
        status,
        seconds * 1000,
        model,
        usage.total_tokens if usage else "-",
        state["request_id"],
        extra={
            "request_id": state["request_id"],
            "method": scope["method"],
            "path": path,
            "status": status,
            "duration_ms": round(seconds * 1000, 1),
            "agent": agent,
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
        },
    )
