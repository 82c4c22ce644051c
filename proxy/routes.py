"""What every API's routes share (the key guards, the OpenAPI error spec, the event-stream answer), and
the proxy's own routes: the probes and the metrics."""

from collections.abc import AsyncGenerator
from typing import Any, Literal

import msgspec
from litestar import Request, Response, get
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Send

from proxy.auth import identify, presented_key
from proxy.disconnect import deliver
from proxy.errors import ErrorBody, unauthorized
from proxy.letta import Letta
from proxy.observe import exposition
from proxy.turn_runner import Served, Whole


class Health(msgspec.Struct):
    """The proxy's own probes (`/health`, `/ready`), not an OpenAI object."""

    status: Literal["ok", "unavailable"]


ERROR = ResponseSpec(ErrorBody, description="An OpenAI error", generate_examples=False)
ERRORS = {status: ERROR for status in (400, 401, 404, 413, 429, 502, 503, 504)}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class _DeliveredStream(ASGIStreamingResponse):
    """Litestar's streaming response, its body sent by `deliver` (frames closed on every way out)."""

    __slots__ = ("stall_seconds",)

    def __init__(self, frames: AsyncGenerator[bytes, None], stall_seconds: float) -> None:
        super().__init__(iterator=frames, media_type="text/event-stream", headers=SSE_HEADERS)
        self.stall_seconds = stall_seconds

    async def send_body(self, send: Send, receive: Receive) -> None:
        await deliver(self.iterator, send, receive, self.stall_seconds)  # type: ignore[arg-type]


class EventStream(Stream):
    """An SSE answer: Litestar's `Stream` would leave its iterator unclosed when the client goes."""

    __slots__ = ("stall_seconds",)

    def __init__(self, frames: AsyncGenerator[bytes, None], stall_seconds: float) -> None:
        super().__init__(frames, media_type="text/event-stream", headers=SSE_HEADERS)
        self.stall_seconds = stall_seconds

    def to_asgi_response(self, *_: Any, **__: Any) -> ASGIResponse:
        return _DeliveredStream(self.iterator, self.stall_seconds)  # type: ignore[arg-type]


async def require_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Runs before the body is read: without a valid key, nothing else of the request is looked at."""
    client = identify(presented_key(connection.headers.items()), connection.app.state.clients)
    if client is None:
        raise unauthorized()
    connection.state.client = client


async def require_unscoped_key(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """The metrics name every agent, so a key scoped to some agents is told the route does not exist,
    exactly as for any unknown route."""
    await require_key(connection, handler)
    if connection.state.client.agents is not None:
        raise NotFoundException()


def reply(request: Request, served: Served[Whole], stall_seconds: float) -> Response[Whole] | Stream:
    """The answer whole, or as an event stream; its agent and turn noted for the access log."""
    request.state.agent, request.state.translator = served.agent, served.translator
    if isinstance(served.answer, msgspec.Struct):
        return Response(served.answer)
    return EventStream(served.answer, stall_seconds)


@get("/health", summary="Liveness: the process is up", security=[{}])
async def health() -> Health:
    """No key and no Letta call: for liveness probes."""
    return Health("ok")


@get(
    "/ready",
    summary="Readiness: Letta answers",
    security=[{}],
    responses={503: ResponseSpec(Health)},
)
async def ready(letta: NamedDependency[Letta]) -> Response[Health]:
    """503 while Letta is unreachable, so load balancers send no traffic that would fail."""
    if await letta.ready():
        return Response(Health("ok"))
    return Response(Health("unavailable"), status_code=503)


@get("/metrics", summary="Prometheus metrics", guards=[require_unscoped_key], include_in_schema=False)
async def metrics() -> Response[bytes]:
    """Behind the keys that are scoped to no agents: scrape with `authorization: {credentials: <key>}`."""
    body, media_type = exposition()
    return Response(body, media_type=media_type)


probes = [health, ready]
