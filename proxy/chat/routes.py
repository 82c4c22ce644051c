"""The chat routes: `GET /v1/models` and `POST /v1/chat/completions`. Thin: parse, call, answer."""

from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody
from litestar.response import Stream

from proxy.agent_choice import AgentChoice
from proxy.chat import protocol
from proxy.chat.serving import Chat
from proxy.disconnect import ClientWatch
from proxy.routes import ERROR, ERRORS, reply

CHAT_RESPONSES = {
    **ERRORS,
    200: ResponseSpec(
        protocol.ChatCompletion,
        generate_examples=False,
        description="A chat.completion; with stream=true, text/event-stream of chat.completion.chunk "
        "objects as `data:` lines, ending with `data: [DONE]`",
    ),
}


@get("/models", summary="List the Letta agents as models", responses={401: ERROR, 503: ERROR})
async def list_models(request: Request, choice: NamedDependency[AgentChoice]) -> protocol.ModelList:
    """Every agent this key may use, by name (by id where agents share a name)."""
    models = await choice.models(request.state.client)
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
    return reply(request, served, chat.stall_seconds)


route_handlers = [list_models, chat_completions]
