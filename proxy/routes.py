"""The HTTP handlers: parse, call, answer. Thin on purpose; the work is in serving, translate and stream."""

from collections.abc import AsyncGenerator
from typing import Any

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Send

from proxy import protocol
from proxy.auth import identify, presented_key
from proxy.disconnect import ClientWatch, deliver
from proxy.errors import unauthorized
from proxy.letta import Letta
from proxy.observe import exposition
from proxy.responses import protocol as responses_wire
from proxy.responses.serving import Responses
from proxy.routing import Routing
from proxy.serving import Chat, Served, Whole

_ERROR = ResponseSpec(protocol.ErrorBody, description="An OpenAI error", generate_examples=False)
ERRORS = {status: _ERROR for status in (400, 401, 404, 413, 429, 502, 503, 504)}
CHAT_RESPONSES = {
    **ERRORS,
    200: ResponseSpec(
        protocol.ChatCompletion,
        generate_examples=False,
        description="A chat.completion; with stream=true, text/event-stream of chat.completion.chunk "
        "objects as `data:` lines, ending with `data: [DONE]`",
    ),
}
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


@get("/models", summary="List the Letta agents as models", responses={401: _ERROR, 503: _ERROR})
async def list_models(request: Request, routing: NamedDependency[Routing]) -> protocol.ModelList:
    """Every agent this key may use, by name (by id where agents share a name)."""
    models = await routing.models(request.state.client)
    return protocol.ModelList(data=[protocol.Model(id=name, created=agent.created) for name, agent in models])


@post(
    "/chat/completions",
    summary="Send the new user turns to an agent",
    status_code=200,
    responses=CHAT_RESPONSES,
)
async def chat_completions(
    request: Request, data: JSONBody[protocol.ChatCompletionRequest], chat: NamedDependency[Chat]
) -> Response[protocol.ChatCompletion] | Stream:
    """One agent turn, answered whole or as SSE chunks; turns for one agent are taken one at a time."""
    async with ClientWatch(request.receive) as watch:
        served = await chat.serve(request.state.client, data, request.headers, watch)
    return _reply(request, served, chat.stall_seconds)


@post(
    "/responses",
    summary="The Responses API: send the new input items to an agent",
    status_code=200,
    responses={
        **ERRORS,
        409: _ERROR,
        200: ResponseSpec(
            responses_wire.Response,
            generate_examples=False,
            description="A response; with stream=true, text/event-stream of `event:`/`data:` lines from "
            "response.created to response.completed (or response.failed)",
        ),
    },
)
async def create_response(
    request: Request,
    data: JSONBody[responses_wire.ResponseRequest],
    responses: NamedDependency[Responses],
) -> Response[responses_wire.Response] | Stream:
    """One agent turn in the Responses format, over the same turn path as chat completions."""
    async with ClientWatch(request.receive) as watch:
        served = await responses.create(request.state.client, data, request.headers, watch)
    return _reply(request, served, responses.stall_seconds)


@get(
    "/responses/{response_id:str}",
    summary="A past response, rebuilt from the agent's Letta run",
    responses={401: _ERROR, 404: _ERROR, 502: _ERROR, 503: _ERROR, 504: _ERROR},
)
async def retrieve_response(
    request: Request, response_id: FromPath[str], responses: NamedDependency[Responses]
) -> responses_wire.Response:
    """Served from Letta's history: the proxy keeps no copy of what it answered."""
    return await responses.retrieve(request.state.client, response_id)


def _reply(request: Request, served: Served[Whole], stall_seconds: float) -> Response[Whole] | Stream:
    """The answer whole, or as an event stream; its agent and turn noted for the access log."""
    request.state.agent, request.state.translator = served.agent, served.translator
    if isinstance(served.answer, msgspec.Struct):
        return Response(served.answer)
    return EventStream(served.answer, stall_seconds)


@get("/health", summary="Liveness: the process is up", security=[{}])
async def health() -> protocol.Health:
    """No key and no Letta call: for liveness probes."""
    return protocol.Health("ok")


@get(
    "/ready",
    summary="Readiness: Letta answers",
    security=[{}],
    responses={503: ResponseSpec(protocol.Health)},
)
async def ready(letta: NamedDependency[Letta]) -> Response[protocol.Health]:
    """503 while Letta is unreachable, so load balancers send no traffic that would fail."""
    if await letta.ready():
        return Response(protocol.Health("ok"))
    return Response(protocol.Health("unavailable"), status_code=503)


@get("/metrics", summary="Prometheus metrics", guards=[require_unscoped_key], include_in_schema=False)
async def metrics() -> Response[bytes]:
    """Behind the keys that are scoped to no agents: scrape with `authorization: {credentials: <key>}`."""
    body, media_type = exposition()
    return Response(body, media_type=media_type)


v1 = Router(
    "/v1",
    route_handlers=[list_models, chat_completions, create_response, retrieve_response],
    guards=[require_key],
)
probes = [health, ready]
