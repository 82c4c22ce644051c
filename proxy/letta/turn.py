"""One turn sent to Letta, whole or as its token stream, within the proxy's deadlines and size bounds.

Only a turn that never left is resent; a stream left unfinished has its run cancelled, however its
reader stops.
"""

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing, asynccontextmanager
from typing import Any, TypeVar, cast

import httpx
import letta_client
from letta_client.types.agents.message_create_params import ClientTool, Message

from proxy.errors import ProxyError, upstream_failure
from proxy.letta.agent_calls import AgentCalls
from proxy.letta.agents import Agent
from proxy.letta.cancel import cancel_run
from proxy.letta.client import RETRY_BACKOFF
from proxy.letta.errors import UPSTREAM_ERRORS, map_failure, timed_out
from proxy.letta.wire import LettaMessage, LettaResponse, SSEDecoder, decode_turn
from proxy.settings import Settings

T = TypeVar("T")


def _with_otids(messages: Iterable[Message]) -> list[Message]:
    """Gives each message an offline id, the same on every retry, so Letta can tell a duplicate."""
    return [cast(Message, {**message, "otid": str(uuid.uuid4())}) for message in messages]


def _turn_body(messages: Iterable[Message], client_tools: list[ClientTool]) -> dict[str, Any]:
    """A turn's request body; client tools only when the client offers some."""
    body: dict[str, Any] = {"messages": _with_otids(messages)}
    if client_tools:
        body["client_tools"] = client_tools
    return body


class TurnCalls(AgentCalls):
    def __init__(self, settings: Settings, clock: Callable[[], float] | None = None) -> None:
        super().__init__(settings, clock)
        self._connect_retries = settings.letta_connect_retries
        self._gap = settings.letta_timeout
        self._turn_seconds = settings.proxy_turn_timeout_seconds

    async def send(
        self, agent: Agent, messages: Iterable[Message], client_tools: list[ClientTool] | None = None
    ) -> LettaResponse:
        """One whole turn, within PROXY_TURN_TIMEOUT_SECONDS and PROXY_MAX_UPSTREAM_BYTES."""
        body = _turn_body(messages, client_tools or [])
        path = f"/v1/agents/{agent.id}/messages"
        async with self._within(asyncio.get_running_loop().time() + self._turn_seconds):
            answer = await self._retrying(lambda: self._post_whole(path, body))
        return decode_turn(answer, self._secret)

    async def _post_whole(self, path: str, body: dict[str, Any]) -> bytes:
        return await self._body(await self._post(path, body, unread=True), sent=True)

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
                    self._in_background(cancel_run(self._client, agent, run_id, conversation))
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

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Retries only a turn that never left: one whose connection to Letta could not be made."""
        attempt = 0
        while True:
            try:
                return await self._sent(call)
            except ProxyError as error:
                if (
                    error.code != "upstream_unavailable"
                    or not error.retry_safe
                    or attempt >= self._connect_retries
                ):
                    raise
            await asyncio.sleep(RETRY_BACKOFF * 2**attempt)
            attempt += 1

    async def _sent(self, call: Callable[[], Awaitable[T]]) -> T:
        """A turn's call: Letta's 404 there means the agent is gone, so the directory lists again."""
        try:
            return await call()
        except letta_client.NotFoundError as exc:
            self._directory.forget()
            raise ProxyError(
                404, "The agent behind this model no longer exists.", code="model_not_found", param="model"
            ) from exc
        except UPSTREAM_ERRORS as exc:
            raise map_failure(exc, sent=True, secret=self._secret) from exc


def _event_stream(response: httpx.Response) -> None:
    """Refuses, before the client's stream opens, an answer that is not Letta's event stream (a proxy's
    HTML page, say)."""
    kind = response.headers.get("content-type", "")
    if not kind.startswith("text/event-stream"):
        raise upstream_failure(f"The Letta server answered a stream with '{kind[:60]}', not an event stream.")
