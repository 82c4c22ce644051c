"""What a failure of Letta means to a client: every SDK and transport failure as a `ProxyError`.

Letta's own words are passed on as text (never a Python repr), shortened and without our Letta token;
the log gets only the status and Letta's error kind, never its text, which may echo what a user sent.
"""

import logging
import math

import aiohttp
import httpx
import letta_client

from proxy.errors import ProxyError, upstream_failure
from proxy.letta.wire import error_text, redact

log = logging.getLogger("proxy")

TRANSPORT_ERRORS = (aiohttp.ClientError, httpx.TransportError, TimeoutError)
UPSTREAM_ERRORS = (letta_client.APIError, httpx.HTTPError, *TRANSPORT_ERRORS)  # aiohttp's unmapped ones too
MAX_SHOWN = 200  # characters of Letta's error text passed on
PENDING_APPROVAL = "PENDING_APPROVAL"  # Letta's 409 for an agent waiting on a tool approval


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost transport error behind `exc`: the SDK wraps httpx's error, which wraps aiohttp's,
    and httpx-aiohttp maps some of aiohttp's to the wrong httpx class (a refused connection to a timeout)."""
    root, cause = exc, exc.__cause__
    while cause is not None:
        root = cause if isinstance(cause, TRANSPORT_ERRORS) else root
        cause = cause.__cause__
    return root


def letta_kind(body: object) -> str | None:
    """Letta's machine-readable name for an error, where its body carries one (`PENDING_APPROVAL`,
    `llm_rate_limit`...): safe to log, unlike its text."""
    if not isinstance(body, dict):
        return None
    for holder in (body, body.get("detail"), body.get("error")):
        if isinstance(holder, dict):
            for key in ("code", "error_code", "type"):
                if isinstance(holder.get(key), str):
                    return str(holder[key])
    return None


def _retry_after(headers: httpx.Headers) -> dict[str, str]:
    """Letta's Retry-After, in whole seconds, to pass on; none when it sent none or nonsense."""
    value = headers.get("retry-after", "")
    try:
        seconds = float(value)
    except ValueError:
        return {}
    return {"Retry-After": str(max(1, math.ceil(seconds)))} if 0 <= seconds < 86_400 else {}


def _status_error(exc: letta_client.APIStatusError, *, sent: bool, secret: str | None) -> ProxyError:
    """Letta's refusals that a client can act on keep their meaning; the rest are Letta's 502."""
    body = exc.body if isinstance(exc.body, dict) else {}
    kind = letta_kind(body)
    said = error_text(body.get("detail") or body.get("error") or body.get("message"))
    said = redact(said or exc.response.reason_phrase, secret)[:MAX_SHOWN]
    retry_after = _retry_after(exc.response.headers)
    status = exc.status_code
    log.warning("Letta answered %s (%s)", status, kind or "no error kind")
    if status == 409 and kind == PENDING_APPROVAL:  # the seam for tool approvals: `__cause__` holds the body
        return ProxyError(
            409,
            f"The agent is waiting for the approval of a tool call: {said}",
            code="pending_approval",
            retry_safe=False,  # resending cannot help until the approval is answered
        )
    if status == 409 and (retry_after or "run_id" in body or "being processed" in said):
        return ProxyError(
            429,
            f"The agent is busy with another run in Letta; try again shortly. ({said})",
            type="requests",
            code="agent_busy",
            headers=retry_after or {"Retry-After": "1"},
        )
    if status == 402 or (status == 429 and "reasons" in body):
        return ProxyError(
            429,
            f"The Letta account is out of quota or credits: {said}",
            type="insufficient_quota",
            code="insufficient_quota",
            retry_safe=False,  # OpenAI's SDKs retry a 429 unless told not to; waiting will not help
            headers=retry_after,
        )
    if status == 429:
        return ProxyError(
            429,
            f"The Letta server is rate limiting requests: {said}",
            type="requests",
            code="rate_limit_exceeded",
            headers=retry_after,
        )
    return ProxyError(
        502,
        f"The Letta server answered {status}: {said}",
        type="server_error",
        code="upstream_error",
        retry_safe=not sent,
        headers=retry_after,
    )


def map_failure(exc: Exception, *, sent: bool, secret: str | None) -> ProxyError:
    """Maps an SDK or transport failure to the client's error; `sent` marks failures after the turn left."""
    if isinstance(exc, letta_client.APIStatusError):
        return _status_error(exc, sent=sent, secret=secret)
    root = _root_cause(exc)
    if isinstance(root, TimeoutError | httpx.TimeoutException):
        log.warning("Letta timed out: %s", root.__class__.__name__)
        return ProxyError(
            504,
            "The Letta server did not answer in time.",
            type="server_error",
            code="upstream_timeout",
            retry_safe=not sent,
        )
    if sent and not isinstance(root, aiohttp.ClientConnectorError | httpx.ConnectError):
        log.warning("Letta's connection broke off: %s", root.__class__.__name__)
        return upstream_failure(
            "The Letta server closed the connection before the turn was complete.",
            code="upstream_disconnected",
        )
    log.warning("Letta unreachable: %s", root.__class__.__name__)
    return ProxyError(  # safe to resend: there was no connection, or the turn had not left yet
        503, "The Letta server is unreachable.", type="server_error", code="upstream_unavailable"
    )


def too_large(limit: int, *, sent: bool) -> ProxyError:
    return ProxyError(
        502,
        f"The Letta server's answer is larger than the proxy accepts ({limit} bytes, "
        "PROXY_MAX_UPSTREAM_BYTES).",
        type="server_error",
        code="upstream_too_large",
        retry_safe=not sent,
    )


def timed_out(message: str) -> ProxyError:
    """A turn past one of its deadlines: it reached Letta, so it must not be resent."""
    log.warning("Letta turn timed out: %s", message)
    return ProxyError(504, message, type="server_error", code="upstream_timeout", retry_safe=False)
