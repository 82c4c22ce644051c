"""The only module that talks to Letta: agents, turns and streams, through one pooled letta-client.

Every upstream failure leaves here as a `ProxyError` with the status a client should see.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from contextlib import aclosing, asynccontextmanager
from typing import Any, TypeVar, cast

import aiohttp
import httpx
import letta_client
from httpx_aiohttp import AiohttpTransport
from letta_client import AsyncLetta
from letta_client._constants import RAW_RESPONSE_HEADER
from letta_client.types.agents.message_create_params import ClientTool, Message

from proxy.errors import ProxyError, upstream_failure
from proxy.letta_agents import LIST_PAGE, Agent, AgentDirectory
from proxy.letta_errors import UPSTREAM_ERRORS, map_failure, timed_out, too_large
from proxy.letta_wire import (
    AgentRecord,
    LettaMessage,
    LettaTurn,
    RunRecord,
    SSEDecoder,
    decode_agents,
    decode_messages,
    decode_run,
    decode_state,
    decode_turn,
    decode_usage,
)
from proxy.settings import Settings

log = logging.getLogger("proxy")

T = TypeVar("T")
CONNECT_TIMEOUT = 10.0
KEEPALIVE_SECONDS = 4.0  # below the 5 s after which Letta 0.16.8 (uvicorn) closes an idle connection
LIST_RETRIES = 2
READY_CACHE_SECONDS = 2.0
READY_TIMEOUT = 5.0
RETRY_BACKOFF = 0.25  # seconds, doubled at each retry
CANCEL_TIMEOUT = 10.0
RUN_MESSAGES = 1000  # messages of one past turn read back, at most
READ_WHOLE: dict[str, str] = {RAW_RESPONSE_HEADER: "stream"}  # the SDK leaves the body to us, unread
READ_BUFSIZE = 16 * 1024  # aiohttp's per-connection read buffer, the first bound of a stream's memory


def _with_otids(messages: Iterable[Message]) -> list[Message]:
    """Gives each message an offline id, the same on every retry, so Letta can tell a duplicate."""
    return [cast(Message, {**message, "otid": str(uuid.uuid4())}) for message in messages]


def _turn_body(messages: Iterable[Message], client_tools: list[ClientTool]) -> dict[str, Any]:
    """A turn's request body; client tools only when the client offers some."""
    body: dict[str, Any] = {"messages": _with_otids(messages)}
    if client_tools:
        body["client_tools"] = client_tools
    return body


def _unbounded_session() -> aiohttp.ClientSession:
    """No cap on connections to Letta: a cap of 100 (the SDK's, and aiohttp's) made the 101st stream wait.

    A small read buffer: aiohttp stops reading a stream nobody takes from only past a few of them, and
    with its default (64 KiB) each stream whose client stopped reading held about 0.5 MiB here.
    """
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_SECONDS)
    return aiohttp.ClientSession(connector=connector, read_bufsize=READ_BUFSIZE)


def http_client() -> httpx.AsyncClient:
    """The SDK's client on aiohttp's transport, which letta-client offers for concurrency.

    It costs a third of the CPU per turn of httpx's own pool (bench/README.md). Tests that mock Letta
    with respx, which patches httpx's own transport, swap this function for one on httpx's.
    """
    return letta_client.DefaultAioHttpClient(transport=AiohttpTransport(client=_unbounded_session))


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
            http_client=http_client(),
        )
        self._connect_retries = settings.letta_connect_retries
        self._gap = settings.letta_timeout
        self._turn_seconds = settings.proxy_turn_timeout_seconds
        self._max_bytes = settings.proxy_max_upstream_bytes
        self._background: set[asyncio.Task[None]] = set()
        self._ready = False
        self._ready_at = -float("inf")
        self._checking: asyncio.Task[None] | None = None
        self._has_conversations: bool | None = None
        self._directory = AgentDirectory(self._page, settings, self._in_background)

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

    async def agents(self, *, fresh: bool = False) -> list[Agent]:
        return await self._directory.agents(fresh=fresh)

    async def _page(self, params: dict[str, object]) -> list[AgentRecord]:
        """One page, retried briefly if Letta fails; a Letta that asks us to wait is left alone and its
        Retry-After passed on, rather than waited out while a request waits on the listing."""
        attempt = 0
        while True:
            try:
                response = await self._client.get(
                    "/v1/agents/", cast_to=httpx.Response, options={"params": params, "headers": READ_WHOLE}
                )
                return decode_agents(await self._body(response, sent=False))
            except UPSTREAM_ERRORS as exc:
                if attempt >= LIST_RETRIES or not _passing(exc):
                    raise map_failure(exc, sent=False, secret=self._secret) from exc
            await asyncio.sleep(RETRY_BACKOFF * 2**attempt)
            attempt += 1

    # An end user's own agent (proxy/user_agents.py): the template's state, and agents by their tag.

    async def agent_state(self, agent_id: str, include: Iterable[str]) -> dict[str, Any]:
        """The agent's state with the relations named (`agent.blocks`...), as plain data."""
        options = {"params": {"include": list(include)}, "headers": READ_WHOLE}
        path = f"/v1/agents/{agent_id}"
        response = await self._call(
            lambda: self._client.get(path, cast_to=httpx.Response, options=options), sent=False
        )
        return decode_state(await self._body(response, sent=False))

    async def tagged(self, tag: str) -> list[AgentRecord]:
        """The agents carrying `tag`, oldest first: one page, as a tag names one agent, a few after a race."""
        return await self._page({"tags": [tag], "order": "asc", "limit": LIST_PAGE})

    async def create_agent(self, body: dict[str, Any]) -> None:
        """Never retried: a create that may have reached Letta is looked for by its tag instead."""
        await self._call(lambda: self._post("/v1/agents/", body), sent=False)

    async def delete_agent(self, agent_id: str) -> None:
        """An agent already gone is no failure: another replica may have deleted it first."""
        try:
            await self._client.agents.delete(agent_id)
        except letta_client.NotFoundError:
            pass
        except UPSTREAM_ERRORS as exc:
            raise map_failure(exc, sent=False, secret=self._secret) from exc

    async def send(
        self, agent: Agent, messages: Iterable[Message], client_tools: list[ClientTool] | None = None
    ) -> LettaTurn:
        """One whole turn, within PROXY_TURN_TIMEOUT_SECONDS and PROXY_MAX_UPSTREAM_BYTES."""
        body = _turn_body(messages, client_tools or [])
        path = f"/v1/agents/{agent.id}/messages"
        async with self._within(asyncio.get_running_loop().time() + self._turn_seconds):
            answer = await self._retrying(lambda: self._post_whole(path, body))
        return decode_turn(answer, self._secret)

    async def _post(self, path: str, body: dict[str, Any], *, unread: bool = False) -> httpx.Response:
        """A POST through the SDK (URL, credentials, timeouts, errors) that leaves decoding to msgspec.

        `unread` asks the SDK for the body as a stream, the switch its own `with_streaming_response` uses.
        """
        headers = READ_WHOLE if unread else {}
        return await self._client.post(path, body=body, cast_to=httpx.Response, options={"headers": headers})

    async def _post_whole(self, path: str, body: dict[str, Any]) -> bytes:
        return await self._body(await self._post(path, body, unread=True), sent=True)

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

    @asynccontextmanager
    async def _within(self, turn_end: float, *, gap: bool = False) -> AsyncIterator[None]:
        """The block, given up at the end of the turn, or with `gap` after LETTA_TIMEOUT if sooner."""
        gap_end = asyncio.get_running_loop().time() + self._gap if gap else turn_end
        try:
            async with asyncio.timeout_at(min(gap_end, turn_end)):
                yield
        except TimeoutError as exc:
            if turn_end <= gap_end:
                message = f"The turn took longer than the proxy allows ({self._turn_seconds:g} s)."
            else:
                message = f"The Letta server sent nothing for {self._gap:g} s."
            raise timed_out(message) from exc

    async def last_message(self, agent: Agent, conversation: str | None) -> LettaMessage | None:
        """The newest message of the agent's default history, or of a conversation: an approval request
        there means the agent waits on tool calls."""
        return next(iter(await self.recent_messages(agent, conversation, 1)), None)

    async def recent_messages(self, agent: Agent, conversation: str | None, limit: int) -> list[LettaMessage]:
        """The newest messages of the agent's default history, or of a conversation, newest first.

        Letta 0.16.8 lists the newest `limit` messages, but the default history oldest first and a
        conversation newest first, whatever `order` says; this puts both newest first.
        """
        params: dict[str, object] = {"limit": limit, "order": "desc"}
        if conversation is None:
            params["agent_id"] = agent.id
        try:
            body = await self._get(f"/v1/conversations/{conversation or 'default'}/messages", params)
        except letta_client.NotFoundError as exc:
            raise ProxyError(
                404, "The agent or conversation of this turn no longer exists in Letta.", code="not_found"
            ) from exc
        messages = decode_messages(body)
        return messages if conversation else messages[::-1]

    async def conversation_agent(self, conversation: str) -> str | None:
        """The agent a conversation belongs to; None when Letta has no such conversation."""
        try:
            found = await self._client.conversations.retrieve(conversation)
        except letta_client.NotFoundError:
            return None
        except UPSTREAM_ERRORS as exc:
            raise map_failure(exc, sent=False, secret=self._secret) from exc
        return found.agent_id

    async def run(self, run_id: str) -> tuple[RunRecord, list[LettaMessage], LettaMessage] | None:
        """A past turn as Letta keeps it: the run, its messages (oldest first) and its usage; None if gone."""
        try:
            run, messages, usage = await asyncio.gather(
                self._get(f"/v1/runs/{run_id}", {}),
                self._get(f"/v1/runs/{run_id}/messages", {"limit": RUN_MESSAGES, "order": "asc"}),
                self._get(f"/v1/runs/{run_id}/usage", {}),
            )
        except letta_client.NotFoundError:
            return None
        return decode_run(run), decode_messages(messages), decode_usage(usage)

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

    def _in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task that outlives its caller and that `aclose` still waits for."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

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

    async def cancel_active(self, agent: Agent, conversation: str | None) -> None:
        """Cancels the runs active in one history of the agent (its default one, or `conversation`).

        For a turn whose client left before its run id was known: called while the proxy holds that
        history's turn, when the only run active there is the leaving turn's. Letta's cancel without run
        ids would also stop the runs of the agent's other conversations, so the runs are picked here.
        """
        client = self._client.with_options(timeout=CANCEL_TIMEOUT)
        try:
            active = await client.runs.list(agent_id=agent.id, statuses=["created", "running"], limit=100)
            run_ids = [  # one page: in the history the proxy holds, one run at most is active
                run.id
                for run in active.items
                if run.agent_id == agent.id and run.conversation_id == conversation
            ]
            if run_ids:
                await client.agents.messages.cancel(agent.id, run_ids=run_ids)
            log.info("cancelled %d active run(s) of agent %s", len(run_ids), agent.id)
        except UPSTREAM_ERRORS as exc:
            log.warning("could not cancel the active runs of agent %s: %s", agent.id, exc.__class__.__name__)

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

    async def has_conversations(self) -> bool:
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
        messages: Iterable[Message],
        on_close: Callable[[], None],
        conversation: str | None = None,
        client_tools: list[ClientTool] | None = None,
    ) -> AsyncGenerator[LettaMessage, None]:
        """One turn as Letta's token stream, already opened and its first event read.

        Opening before the caller answers means that a refused or failed turn is still a real HTTP
        error, not an error inside a 200 stream. `on_close` runs once the stream is over, however it ends.
        """
        body = {
            **_turn_body(messages, client_tools or []),
            "streaming": True,
            "stream_tokens": True,
            "include_pings": True,
        }
        events = self._events(agent, body, on_close, conversation)
        await anext(events)  # runs until Letta's first event is in: a failure to open raises here
        return cast(AsyncGenerator[LettaMessage, None], events)  # its one None has just been read

    async def _events(
        self,
        agent: Agent,
        body: dict[str, Any],
        on_close: Callable[[], None],
        conversation: str | None,
    ) -> AsyncGenerator[LettaMessage | None, None]:
        """Yields None once the first event is in, then the events.

        Everything happens inside the generator, so that its `finally` closes the upstream response and
        cancels a run left unfinished however the reader stops, even one that never reads past the opening,
        or one given up at PROXY_TURN_TIMEOUT_SECONDS, or after LETTA_TIMEOUT without an event.
        """
        turn_end = asyncio.get_running_loop().time() + self._turn_seconds
        try:
            path = (
                f"/v1/conversations/{conversation}/messages"
                if conversation
                else f"/v1/agents/{agent.id}/messages"
            )
            async with self._within(turn_end):
                response = await self._retrying(lambda: self._post(path, body, unread=True))
            run_id, stopped = None, False
            try:
                _event_stream(response)
                async with aclosing(self._read(response)) as events:
                    async with self._within(turn_end, gap=True):  # never across a yield
                        event = await anext(events, None)
                    run_id = event.run_id if event else None
                    yield None
                    while event is not None:
                        stopped = stopped or event.message_type == "stop_reason"
                        yield event
                        async with self._within(turn_end, gap=True):
                            event = await anext(events, None)
                        run_id = run_id or (event.run_id if event else None)
                stopped = True
            finally:
                await response.aclose()
                if not stopped and run_id is not None:  # a run nobody will read any more
                    self._in_background(self._cancel(agent, run_id, conversation))
        finally:
            on_close()

    async def _read(self, response: httpx.Response) -> AsyncGenerator[LettaMessage, None]:
        """The stream's messages as its bytes arrive, up to `[DONE]`."""
        decoder = SSEDecoder(self._secret)
        try:
            async for chunk in response.aiter_bytes():
                for message in decoder.feed(chunk):
                    yield message
                if decoder.done:
                    return
        except UPSTREAM_ERRORS as exc:
            raise map_failure(exc, sent=True, secret=self._secret) from exc

    async def _call(self, call: Callable[[], Awaitable[T]], *, sent: bool) -> T:
        try:
            return await call()
        except letta_client.NotFoundError as exc:
            if sent:
                self._directory.forget()  # the agent is gone: list again next time
                raise ProxyError(
                    404,
                    "The agent behind this model no longer exists.",
                    code="model_not_found",
                    param="model",
                ) from exc
            raise map_failure(exc, sent=sent, secret=self._secret) from exc
        except UPSTREAM_ERRORS as exc:
            raise map_failure(exc, sent=sent, secret=self._secret) from exc


def _event_stream(response: httpx.Response) -> None:
    """Refuses, before the client's stream opens, an answer that is not Letta's event stream (a proxy's
    HTML page, say)."""
    kind = response.headers.get("content-type", "")
    if not kind.startswith("text/event-stream"):
        raise upstream_failure(f"The Letta server answered a stream with '{kind[:60]}', not an event stream.")


def _passing(exc: Exception) -> bool:
    """A failure of a listing that is worth one more try: not a refusal, and not one that asks us to wait."""
    if isinstance(exc, letta_client.APIStatusError):
        status = exc.status_code
        return (status >= 500 or status in (408, 429)) and "retry-after" not in exc.response.headers
    return True
