"""The only module that talks to Letta: agents, turns and streams, through one pooled letta-client.

Every upstream failure leaves here as a `ProxyError` with the status a client should see.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import letta_client
from letta_client import AsyncLetta
from letta_client.types import MessageCreateParam
from letta_client.types.agents import LettaResponse

from proxy.errors import ProxyError
from proxy.settings import Settings
from proxy.translate import upstream_failure

log = logging.getLogger("proxy")

T = TypeVar("T")
CONNECT_TIMEOUT = 10.0
KEEPALIVE_CONNECTIONS = 100
LIST_RETRIES = 2
READY_CACHE_SECONDS = 2.0
READY_TIMEOUT = 5.0
LIST_PAGE = 100
RETRY_BACKOFF = 0.25  # seconds, doubled at each retry
CANCEL_TIMEOUT = 10.0  # agents per page; tags are the lightest relation to include, all of them the heaviest


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    name: str
    created: int


def _upstream_error(exc: Exception, *, sent: bool, secret: str | None) -> ProxyError:
    """Maps an SDK or httpx failure to 503/504/502; `sent` marks failures after the turn left us.

    Letta's own words are passed on, shortened, with our Letta token cut out should Letta echo it.
    """
    if isinstance(exc, letta_client.APITimeoutError | httpx.TimeoutException):
        log.warning("Letta timed out: %s", exc.__class__.__name__)
        return ProxyError(
            504,
            "The Letta server did not answer in time.",
            type="server_error",
            code="upstream_timeout",
            retry_safe=not sent,
        )
    if isinstance(exc, letta_client.APIStatusError):
        detail = exc.body.get("detail") if isinstance(exc.body, dict) else None
        summary = str(detail or exc.response.reason_phrase)
        summary = (summary.replace(secret, "[redacted]") if secret else summary)[:200]
        log.warning("Letta answered %s: %s", exc.status_code, summary)
        return ProxyError(
            502,
            f"The Letta server answered {exc.status_code}: {summary}",
            type="server_error",
            code="upstream_error",
            retry_safe=not sent,
        )
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):  # raw httpx: only while reading a stream
        log.warning("Letta's stream broke off: %s", exc.__class__.__name__)
        return upstream_failure(
            "The Letta server closed the stream before the turn was complete.", code="upstream_disconnected"
        )
    connect_failed = isinstance(exc, httpx.ConnectError) or isinstance(exc.__cause__, httpx.ConnectError)
    log.warning("Letta unreachable: %s", exc.__class__.__name__)
    return ProxyError(
        503,
        "The Letta server is unreachable.",
        type="server_error",
        code="upstream_unavailable",
        retry_safe=connect_failed or not sent,
    )


UPSTREAM_ERRORS = (letta_client.APIError, httpx.HTTPError)


def _with_otids(messages: Iterable[MessageCreateParam]) -> list[MessageCreateParam]:
    """Gives each message an offline id, the same on every retry, so Letta can tell a duplicate."""
    return [{**message, "otid": str(uuid.uuid4())} for message in messages]


class Letta:
    """Owns the client, its timeouts and the short-lived agent cache."""

    def __init__(self, settings: Settings) -> None:
        self._secret = settings.letta_api_key.get_secret_value() if settings.letta_api_key else None
        self._client = AsyncLetta(
            base_url=settings.letta_base_url,
            api_key=self._secret,
            project=settings.letta_project,
            timeout=httpx.Timeout(settings.letta_timeout, connect=CONNECT_TIMEOUT),
            max_retries=0,  # a resent turn would be written twice into the agent's memory
            # No cap on connections to Letta: the SDK's default 100 made the 101st open stream wait.
            http_client=letta_client.DefaultAsyncHttpxClient(
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=KEEPALIVE_CONNECTIONS)
            ),
        )
        self._allowed = set(settings.proxy_agents)
        self._cache_seconds = settings.proxy_agent_cache_seconds
        self._connect_retries = settings.letta_connect_retries
        self._background: set[asyncio.Task[None]] = set()
        self._agents: list[Agent] = []
        self._fetched_at = -float("inf")
        self._lock = asyncio.Lock()
        self._ready = False
        self._ready_at = -float("inf")
        self._has_conversations: bool | None = None

    async def aclose(self) -> None:
        if self._background:
            await asyncio.wait(self._background, timeout=CANCEL_TIMEOUT)
        await self._client.close()

    async def ready(self) -> bool:
        """Whether Letta answers its health check; remembered briefly so probes cannot flood Letta."""
        if time.monotonic() - self._ready_at >= READY_CACHE_SECONDS:
            try:
                await self._client.with_options(timeout=READY_TIMEOUT).health()
                self._ready = True
            except UPSTREAM_ERRORS as exc:
                log.warning("Letta is not ready: %s", exc.__class__.__name__)
                self._ready = False
            self._ready_at = time.monotonic()
        return self._ready

    async def agents(self) -> list[Agent]:
        """The exposed agents, listed at most once per cache period however many requests ask."""
        async with self._lock:
            if time.monotonic() - self._fetched_at >= self._cache_seconds:
                self._agents = await self._call(self._list_agents, sent=False)
                self._fetched_at = time.monotonic()
            return self._agents

    async def _list_agents(self) -> list[Agent]:
        client = self._client.with_options(max_retries=LIST_RETRIES)
        listed = [
            Agent(agent.id, agent.name, int(agent.created_at.timestamp()) if agent.created_at else 0)
            async for agent in client.agents.list(include=["agent.tags"], limit=LIST_PAGE)
        ]
        if not self._allowed:
            return listed
        return [agent for agent in listed if agent.name in self._allowed or agent.id in self._allowed]

    async def send(self, agent: Agent, messages: Iterable[MessageCreateParam]) -> LettaResponse:
        """One whole turn."""
        turn = _with_otids(messages)
        return await self._retrying(lambda: self._client.agents.messages.create(agent.id, messages=turn))

    def _cancel_soon(self, agent: Agent, run_id: str, conversation: str | None) -> None:
        """Stops a run nobody will read any more, in the background: the caller is being torn down."""
        task = asyncio.get_running_loop().create_task(self._cancel(agent, run_id, conversation))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _cancel(self, agent: Agent, run_id: str, conversation: str | None) -> None:
        client = self._client.with_options(timeout=CANCEL_TIMEOUT)
        try:
            if conversation:
                await client.conversations.cancel(conversation)
            else:
                await client.agents.messages.cancel(agent.id, run_ids=[run_id])
            log.info("cancelled run %s of agent %s", run_id, agent.id)
        except UPSTREAM_ERRORS as exc:
            log.warning("could not cancel run %s: %s", run_id, exc.__class__.__name__)

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Retries only a turn that never left: one whose connection to Letta could not be made."""
        attempt = 0
        while True:
            try:
                return await self._call(call, sent=True)
            except ProxyError as error:
                if (
                    error.code != "upstream_unavailable"
                    or not error.retry_safe
                    or attempt >= self._connect_retries
                ):
                    raise
            await asyncio.sleep(RETRY_BACKOFF * 2**attempt)
            attempt += 1

    async def conversations(self) -> bool:
        """Whether this Letta has conversations (Letta Cloud, newer servers; 0.16.8 has none).

        Asked once; a Letta that cannot be reached leaves the question open for the next time.
        """
        if self._has_conversations is None:
            try:
                await self._client.conversations.list(limit=1)
                self._has_conversations = True
            except letta_client.APIStatusError:
                self._has_conversations = False
            except UPSTREAM_ERRORS:
                return False
            log.info("Letta conversations: %s", "available" if self._has_conversations else "not offered")
        return self._has_conversations

    async def open_conversation(self, agent: Agent) -> str:
        """A new conversation of the agent: a separate chat beside its default history."""
        created = await self._call(lambda: self._client.conversations.create(agent_id=agent.id), sent=False)
        return created.id

    async def stream(
        self,
        agent: Agent,
        messages: Iterable[MessageCreateParam],
        on_close: Callable[[], None],
        conversation: str | None = None,
    ) -> AsyncGenerator[object, None]:
        """One turn as Letta's token stream, already opened and its first event read.

        Opening before the caller answers means that a refused or failed turn is still a real HTTP
        error, not an error inside a 200 stream. `on_close` runs once the stream is over, however it ends.
        """
        events = self._events(agent, messages, on_close, conversation)
        await anext(events)  # runs until Letta's first event is in: a failure to open raises here
        return events

    async def _events(
        self,
        agent: Agent,
        messages: Iterable[MessageCreateParam],
        on_close: Callable[[], None],
        conversation: str | None,
    ) -> AsyncGenerator[object, None]:
        """Yields None once the first event is in, then the events.

        Everything happens inside the generator, so that its `finally` closes the upstream response and
        cancels a run left unfinished however the reader stops, even one that never reads past the opening.
        """
        try:
            turn = _with_otids(messages)
            options: dict[str, Any] = {
                "messages": turn,
                "streaming": True,
                "stream_tokens": True,
                "include_pings": True,
            }
            upstream = await self._retrying(
                lambda: (
                    self._client.conversations.messages.create(conversation, **options)
                    if conversation
                    else self._client.agents.messages.create(agent.id, **options)
                )
            )
            events = aiter(upstream)
            run_id, stopped = None, False
            try:
                event = await self._call(lambda: anext(events, None), sent=True)
                run_id = getattr(event, "run_id", None)
                yield None
                while event is not None:
                    stopped = stopped or getattr(event, "message_type", None) == "stop_reason"
                    yield event
                    event = await self._call(lambda: anext(events, None), sent=True)
                    run_id = run_id or getattr(event, "run_id", None)
                stopped = True
            finally:
                await upstream.close()
                if not stopped and run_id is not None:
                    self._cancel_soon(agent, run_id, conversation)
        finally:
            on_close()

    async def _call(self, call: Callable[[], Awaitable[T]], *, sent: bool) -> T:
        try:
            return await call()
        except letta_client.NotFoundError as exc:
            if sent:
                self._fetched_at = -float("inf")  # the agent is gone: list again next time
                raise ProxyError(
                    404,
                    "The agent behind this model no longer exists.",
                    code="model_not_found",
                    param="model",
                ) from exc
            raise _upstream_error(exc, sent=sent, secret=self._secret) from exc
        except UPSTREAM_ERRORS as exc:
            raise _upstream_error(exc, sent=sent, secret=self._secret) from exc
        except ValueError as exc:  # a stream event that is not JSON
            raise upstream_failure("The Letta server sent a malformed stream event.") from exc
