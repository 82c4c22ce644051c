"""`Idempotency-Key`: a POST repeated with the same key (per client key) gets the first one's outcome.

An ASGI middleware, so it serves every POST route (chat completions, responses) without their code
knowing. The first request with a key runs and its response is kept as it is sent (head, then each body
part); a repeat with the same body replays it, waiting for the parts still to come while the first
runs, so a second identical stream replays the first's frames. No repeat ever reaches the agent.
A repeat with another body is a 422. A failed outcome (not 2xx, a stream with an error event, or one cut
short) is not kept: repeats already waiting replay it, and the next repeat runs anew, so a retry after a
clean refusal really retries. Kept in Redis with PROXY_REDIS_URL (replicas share it), else in memory.
"""

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

import msgspec
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from proxy.auth import Client, identify, presented_key
from proxy.errors import ErrorBody, ProxyError, unavailable
from proxy.sessions import SessionStoreError

log = logging.getLogger("proxy")
HEADER = b"idempotency-key"
MAX_KEY_CHARS = 255
_ERROR_EVENT = b'data: {"error":'
Claim = Literal["mine", "theirs", "conflict"]
State = Literal["running", "done", "failed"]


class Outcomes(Protocol):
    """Where outcomes are kept. `key` is already namespaced by the client; parts are latin-1 text
    (any bytes survive), the first one the response's head as JSON."""

    async def claim(self, key: str, fingerprint: str, owner: str) -> Claim: ...
    async def append(self, key: str, owner: str, part: str) -> None: ...
    async def finish(self, key: str, owner: str, kept: bool) -> None: ...
    async def read(self, key: str, start: int) -> tuple[list[str], State] | None: ...
    async def wait(self, key: str, seen: int) -> None: ...
    async def heartbeat(self, key: str, owner: str) -> None: ...


def idempotent(
    app: ASGIApp, outcomes: Outcomes, clients: list[Client], max_body: int, heartbeat_seconds: float
) -> ASGIApp:
    """Wraps an ASGI app; requests without the header, or not POST, or without a known key pass through."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        raw = _header(scope) if scope["type"] == "http" and scope["method"] == "POST" else None
        client = identify(presented_key(_text_headers(scope)), clients) if raw is not None else None
        if raw is None or client is None:  # an unknown key gets its 401 from the app, nothing kept
            await app(scope, receive, send)
            return
        try:
            if not 0 < len(raw) <= MAX_KEY_CHARS or not raw.isprintable():
                raise ProxyError(
                    400,
                    f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable characters.",
                    param="Idempotency-Key",
                    code="invalid_idempotency_key",
                )
            body = await _read_body(receive, max_body)
        except ProxyError as error:
            await _send_error(send, error)
            return
        key = hashlib.sha256(f"{client.namespace}:{raw}".encode()).hexdigest()
        fingerprint = hashlib.sha256(scope["path"].encode() + b"\0" + body).hexdigest()
        owner = uuid.uuid4().hex

        async def replayed_receive() -> Message:
            nonlocal body
            if body is None:
                return await receive()
            message: Message = {"type": "http.request", "body": body, "more_body": False}
            body = None  # type: ignore[assignment]
            return message

        while True:
            try:
                claim = await outcomes.claim(key, fingerprint, owner)
            except SessionStoreError as exc:
                await _send_error(send, _unavailable(exc))
                return
            if claim == "conflict":
                await _send_error(send, _conflict())
                return
            if claim == "mine":
                await _run(app, scope, replayed_receive, send, outcomes, key, owner, heartbeat_seconds)
                return
            try:
                if await _replay(outcomes, key, send):
                    return  # else the first run vanished before sending anything: this one runs instead
            except SessionStoreError as exc:  # the store failed before anything went out
                await _send_error(send, _unavailable(exc))
                return

    return guarded


async def _run(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    outcomes: Outcomes,
    key: str,
    owner: str,
    heartbeat_seconds: float,
) -> None:
    """Runs the request, keeping each part as it goes out; kept only if it ended whole and well."""
    ok = complete = False

    async def keep(part: str) -> None:
        nonlocal ok
        try:
            await outcomes.append(key, owner, part)
        except SessionStoreError as exc:  # the answer still goes out; a partial outcome is not kept
            log.warning("keeping an idempotent outcome failed: %s", exc)
            ok = False

    async def keeping(message: Message) -> None:
        nonlocal ok, complete
        if message["type"] == "http.response.start":
            ok = 200 <= message["status"] < 300
            headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in message.get("headers", ())]
            await keep(json.dumps({"status": message["status"], "headers": headers}))
        elif message["type"] == "http.response.body":
            part = message.get("body", b"")
            ok = ok and _ERROR_EVENT not in part
            await keep(part.decode("latin-1"))
            complete = not message.get("more_body", False)
        await send(message)

    async def beat() -> None:
        while True:
            await asyncio.sleep(heartbeat_seconds)
            try:
                await outcomes.heartbeat(key, owner)
            except SessionStoreError as exc:
                log.warning("renewing an idempotent outcome failed: %s", exc)

    beating = asyncio.create_task(beat())
    try:
        await app(scope, receive, keeping)
    finally:
        beating.cancel()
        try:
            await asyncio.shield(outcomes.finish(key, owner, ok and complete))
        except SessionStoreError as exc:  # a running entry left behind lapses with its heartbeat
            log.warning("ending an idempotent outcome failed: %s", exc)


async def _replay(outcomes: Outcomes, key: str, send: Send) -> bool:
    """Sends the first run's parts as they come; False if it vanished before any (its owner died).
    The store failing before the head went out raises; after, the replay ends where it got to."""
    seen = 0
    while True:
        try:
            progress = await outcomes.read(key, seen)
        except SessionStoreError:
            if seen == 0:
                raise
            progress = None
        if progress is None:
            if seen == 0:
                return False
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return True
        parts, state = progress
        for part in parts:
            if seen == 0:
                head = json.loads(part)
                headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in head["headers"]]
                headers.append((b"idempotent-replayed", b"true"))
                await send({"type": "http.response.start", "status": head["status"], "headers": headers})
            else:
                await send({"type": "http.response.body", "body": part.encode("latin-1"), "more_body": True})
            seen += 1
        if state != "running":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return True
        await outcomes.wait(key, seen)


def _text_headers(scope: Scope) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", ())]


def _header(scope: Scope) -> str | None:
    values = [v for k, v in scope.get("headers", ()) if k == HEADER]
    if not values:
        return None
    return values[0].decode("latin-1") if len(values) == 1 else ""  # sent twice: refused as invalid


async def _read_body(receive: Receive, max_body: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ProxyError(400, "The request body was cut off.", code="incomplete_body")
        part = message.get("body", b"")
        size += len(part)
        if size > max_body:
            raise ProxyError(413, "The request body is too large.", code="body_too_large")
        parts.append(part)
        if not message.get("more_body", False):
            return b"".join(parts)


def _unavailable(exc: SessionStoreError) -> ProxyError:
    return unavailable(
        f"The Idempotency-Key store is unavailable ({exc}); the request was not sent.",
        "idempotency_unavailable",
    )


def _conflict() -> ProxyError:
    return ProxyError(
        422,
        "This Idempotency-Key was already used with a different request body; use a new key.",
        param="Idempotency-Key",
        code="idempotency_key_reused",
    )


async def _send_error(send: Callable[[Message], Awaitable[None]], error: ProxyError) -> None:
    body = msgspec.json.encode(ErrorBody(error=error.detail()))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
