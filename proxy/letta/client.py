"""The pooled letta-client every Letta call goes through: its transport, timeouts, lifecycle and health.

Its helpers read a body within PROXY_MAX_UPSTREAM_BYTES and turn every upstream failure into a
`ProxyError` with the status a client should see; the calls themselves are in the sibling modules.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import aiohttp
import httpx
import letta_client
from httpx_aiohttp import AiohttpTransport
from letta_client import AsyncLetta
from letta_client._constants import RAW_RESPONSE_HEADER

from proxy.letta.errors import UPSTREAM_ERRORS, map_failure, too_large
from proxy.settings import Settings

log = logging.getLogger("proxy")

T = TypeVar("T")
CONNECT_TIMEOUT = 10.0
KEEPALIVE_SECONDS = 4.0  # below the 5 s after which Letta 0.16.8 (uvicorn) closes an idle connection
READY_CACHE_SECONDS = 2.0
READY_TIMEOUT = 5.0
RETRY_BACKOFF = 0.25  # seconds, doubled at each retry
CANCEL_TIMEOUT = 10.0
READ_WHOLE: dict[str, str] = {RAW_RESPONSE_HEADER: "stream"}  # the SDK leaves the body to us, unread
READ_BUFSIZE = 16 * 1024  # aiohttp's per-connection read buffer, the first bound of a stream's memory


def _unbounded_session() -> aiohttp.ClientSession:
    """No cap on connections to Letta: a cap of 100 (the SDK's, and aiohttp's) made the 101st stream wait.

    A small read buffer: aiohttp stops reading a stream nobody takes from only past a few of them, so
    this bounds what each stream whose client stopped reading holds here (bench/README.md).
    """
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_SECONDS)
    return aiohttp.ClientSession(connector=connector, read_bufsize=READ_BUFSIZE)


def http_client() -> httpx.AsyncClient:
    """The SDK's client on aiohttp's transport, which letta-client offers for concurrency.

    It costs less CPU per turn than httpx's own pool (bench/README.md). Tests that mock Letta with respx,
    which patches httpx's own transport, swap this function for one on httpx's.
    """
    return letta_client.DefaultAioHttpClient(transport=AiohttpTransport(client=_unbounded_session))


class LettaClient:
    """Owns the client, its timeouts, the tasks that outlive a request, and the readiness answer."""

    def __init__(self, settings: Settings) -> None:
        self._secret = settings.letta_api_key.get_secret_value() if settings.letta_api_key else None
        self._client = AsyncLetta(
            base_url=settings.letta_base_url,
            api_key=self._secret,
            project=settings.letta_project,
            timeout=httpx.Timeout(settings.letta_timeout, connect=CONNECT_TIMEOUT),
            max_retries=0,  # a resent turn would be written twice into the agent's memory
            http_client=http_client(),
        )
        self._max_bytes = settings.proxy_max_upstream_bytes
        self._background: set[asyncio.Task[None]] = set()
        self._ready = False
        self._ready_at = -float("inf")
        self._checking: asyncio.Task[None] | None = None

    async def aclose(self) -> None:
        if self._background:
            await asyncio.wait(self._background, timeout=CANCEL_TIMEOUT)
        await self._client.close()

    def announce(self) -> None:
        """Says, once Letta has answered or failed to at start-up, whether it answers: in the background,
        so that a Letta that hangs never delays serving; /ready tells the rest."""
        self._in_background(self._announce())

    async def _announce(self) -> None:
        try:
            health = await self._client.with_options(timeout=READY_TIMEOUT).health()
            log.info("Letta at %s answered (version %s)", self._client.base_url, health.version)
        except UPSTREAM_ERRORS as exc:
            error = map_failure(exc, sent=False, secret=self._secret)
            log.warning("Letta at %s does not answer yet: %s", self._client.base_url, error.message)

    async def ready(self) -> bool:
        """Whether Letta answers its health check; remembered briefly, and asked once however many
        probes come meanwhile, so that probes cannot flood a failing Letta."""
        if time.monotonic() - self._ready_at >= READY_CACHE_SECONDS:
            if self._checking is None:
                self._checking = self._in_background(self._check())
            await asyncio.shield(self._checking)  # a probe that gives up leaves the check to the others
        return self._ready

    async def _check(self) -> None:
        try:
            await self._client.with_options(timeout=READY_TIMEOUT).health()
            self._ready = True
        except UPSTREAM_ERRORS as exc:
            log.warning("Letta is not ready: %s", exc.__class__.__name__)
            self._ready = False
        finally:
            self._ready_at = time.monotonic()
            self._checking = None

    def _in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task that outlives its caller and that `aclose` still waits for."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _post(self, path: str, body: dict[str, Any], *, unread: bool = False) -> httpx.Response:
        """A POST through the SDK (URL, credentials, timeouts, errors) that leaves decoding to msgspec.

        `unread` asks the SDK for the body as a stream, the switch its own `with_streaming_response` uses.
        """
        headers = READ_WHOLE if unread else {}
        return await self._client.post(path, body=body, cast_to=httpx.Response, options={"headers": headers})

    async def _get(self, path: str, params: dict[str, object]) -> bytes:
        """A GET through the SDK, its body read within the proxy's bounds. Letta's 404 passes as the SDK's
        NotFoundError, for the caller to say what is missing."""
        options = {"params": params, "headers": READ_WHOLE}
        try:
            response = await self._client.get(path, cast_to=httpx.Response, options=options)
        except letta_client.NotFoundError:
            raise
        except UPSTREAM_ERRORS as exc:
            raise map_failure(exc, sent=False, secret=self._secret) from exc
        return await self._body(response, sent=False)

    async def _body(self, response: httpx.Response, *, sent: bool) -> bytes:
        """The body, read as it comes and given up once past PROXY_MAX_UPSTREAM_BYTES."""
        try:
            pieces, size = [], 0
            async for piece in response.aiter_bytes():
                size += len(piece)
                if size > self._max_bytes:
                    raise too_large(self._max_bytes, sent=sent)
                pieces.append(piece)
            return b"".join(pieces)
        finally:
            await response.aclose()

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        """A call made before any turn left, its SDK or transport failure mapped."""
        try:
            return await call()
        except UPSTREAM_ERRORS as exc:
            raise map_failure(exc, sent=False, secret=self._secret) from exc
