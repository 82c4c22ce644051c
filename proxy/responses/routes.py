"""The Responses API's routes: `POST /v1/responses`, `GET /v1/responses/{id}`. Thin: parse, call, answer."""

from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from proxy.disconnect import ClientWatch
from proxy.responses import protocol as wire
from proxy.responses.serving import Responses
from proxy.routes import ERROR, ERRORS, reply


@post(
    "/responses",
    summary="The Responses API: send the new input items to an agent",
    status_code=200,
    responses={
        **ERRORS,
        409: ERROR,
        200: ResponseSpec(
            wire.Response,
            generate_examples=False,
            description="A response; with stream=true, text/event-stream of `event:`/`data:` lines from "
            "response.created to response.completed (or response.failed)",
        ),
    },
)
async def create_response(
    request: Request,
    data: JSONBody[wire.ResponseRequest],
    responses: NamedDependency[Responses],
) -> Response[wire.Response] | Stream:
    """One agent turn in the Responses format, over the same turn path as chat completions."""
    async with ClientWatch(request.receive) as watch:
        served = await responses.create(request.state.client, data, request.headers, watch)
    return reply(request, served, responses.stall_seconds)


@get(
    "/responses/{response_id:str}",
    summary="A past response, rebuilt from the agent's Letta run",
    responses={401: ERROR, 404: ERROR, 502: ERROR, 503: ERROR, 504: ERROR},
)
async def retrieve_response(
    request: Request, response_id: FromPath[str], responses: NamedDependency[Responses]
) -> wire.Response:
    """Served from Letta's history: the proxy keeps no copy of what it answered."""
    return await responses.retrieve(request.state.client, response_id)


route_handlers = [create_response, retrieve_response]
