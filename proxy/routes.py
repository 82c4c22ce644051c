"""The HTTP handlers: parse, call, answer. Thin on purpose; the work is in serving, translate and stream."""

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from proxy import protocol
from proxy.auth import identify, presented_key
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


async def require_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Runs before the body is read: without a valid key, nothing else of the request is looked at."""
    client = identify(presented_key(connection.headers), connection.app.state.clients)
    if client is None:
        raise unauthorized()
    connection.state.client = client


@get("/models", summary="List the Letta agents as models", responses={401: _ERROR, 503: _ERROR})
async def list_models(request: Request, routing: NamedDependency[Routing]) -> protocol.ModelList:
    """Every agent this key may use, by name."""
    agents = await routing.visible(request.state.client)
    return protocol.ModelList(data=[protocol.Model(id=agent.name, created=agent.created) for agent in agents])


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
    return _reply(request, await chat.serve(request.state.client, data, request.headers))


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
    return _reply(request, await responses.create(request.state.client, data, request.headers))


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


def _reply(request: Request, served: Served[Whole]) -> Response[Whole] | Stream:
    """The answer whole, or as an event stream; its agent and turn noted for the access log."""
    request.state.agent, request.state.turn = served.agent, served.turn
    if isinstance(served.answer, msgspec.Struct):
        return Response(served.answer)
    return Stream(served.answer, media_type="text/event-stream", headers=SSE_HEADERS)


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


@get("/metrics", summary="Prometheus metrics", guards=[require_key], include_in_schema=False)
async def metrics() -> Response[bytes]:
    """Behind the same keys as the API: scrape with `authorization: {credentials: <key>}`."""
    body, media_type = exposition()
    return Response(body, media_type=media_type)


v1 = Router(
    "/v1",
    route_handlers=[list_models, chat_completions, create_response, retrieve_response],
    guards=[require_key],
)
probes = [health, ready]
