"""The HTTP handlers: parse, call Letta, answer. Thin on purpose; the work is in translate and stream."""

import time
import uuid

from litestar import Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody
from litestar.response import Stream

from proxy import protocol
from proxy.auth import Client, identify, presented_key
from proxy.errors import unauthorized
from proxy.letta import Letta
from proxy.observe import exposition
from proxy.routing import Routing
from proxy.settings import Settings
from proxy.stream import ChunkHeader, local_frames, sse_frames
from proxy.tasks import detect_task, local_answer
from proxy.translate import (
    Limits,
    TurnTranslator,
    completion,
    letta_messages,
    local_completion,
    streamed_completion,
)
from proxy.turns import TurnQueue

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
HEALTH_CHECK_HEADER = "x-letta-proxy-health-check"
CHAT_KEY_HEADER = "x-letta-chat-key"
LOCAL_MODEL = "letta-openai-proxy"  # the `model` of an answer the proxy gives itself, when none was named


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
    request: Request,
    data: JSONBody[protocol.ChatCompletionRequest],
    letta: NamedDependency[Letta],
    routing: NamedDependency[Routing],
    turns: NamedDependency[TurnQueue],
    settings: NamedDependency[Settings],
) -> Response[protocol.ChatCompletion] | Stream:
    """One agent turn, answered whole or as SSE chunks; turns for one agent are taken one at a time."""
    client: Client = request.state.client
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    include_usage = data.stream_options is not None and data.stream_options.include_usage
    task = detect_task(data.messages, request.headers) if settings.proxy_task_requests == "skip" else None
    if task is not None:
        header = ChunkHeader(completion_id, created, data.model or LOCAL_MODEL)
        return _local_reply(local_answer(task, data.messages), header, data.stream, include_usage)
    if _is_health_check(request):
        agent = await routing.resolve(client, data.model, data.user)  # the key, Letta and the agent answer
        return _local_reply("", ChunkHeader(completion_id, created, agent.name), data.stream, include_usage)
    limits = Limits(
        settings.proxy_max_messages, settings.proxy_max_text_chars, settings.proxy_max_image_bytes
    )
    messages = letta_messages(data, limits)
    agent = await routing.resolve(client, data.model, data.user)
    translator = TurnTranslator(settings.proxy_tool_calls, settings.proxy_reasoning)
    request.state.agent, request.state.turn = agent.name, translator  # for the access log
    chat_key = await routing.chat_key(request.headers.get(CHAT_KEY_HEADER))
    release = await turns.enter(agent.id if chat_key is None else f"{agent.id}:{chat_key}")
    try:
        conversation = await routing.conversation(client, agent, chat_key) if chat_key else None
        if data.stream or conversation:
            events = await letta.stream(agent, messages, on_close=release, conversation=conversation)
        else:
            response = await letta.send(agent, messages)
    except BaseException:
        release()
        raise
    if not data.stream and not conversation:
        release()
        return Response(completion(response, translator, completion_id, created, agent.name))
    if not data.stream:  # a conversation's turn, which Letta only streams: gathered whole
        gathered = [event async for event in events]
        return Response(streamed_completion(gathered, translator, completion_id, created, agent.name))
    frames = sse_frames(
        events,
        translator,
        ChunkHeader(completion_id, created, agent.name),
        include_usage=include_usage,
        idle_seconds=settings.proxy_keepalive_seconds,
    )
    return Stream(frames, media_type="text/event-stream", headers=SSE_HEADERS)


def _is_health_check(request: Request) -> bool:
    """LiteLLM's health checks carry it (from `health_check_params`); real traffic never does."""
    return request.headers.get(HEALTH_CHECK_HEADER, "").strip().lower() in ("1", "true")


def _local_reply(
    text: str, header: ChunkHeader, stream: bool, include_usage: bool
) -> Response[protocol.ChatCompletion] | Stream:
    """An answer given without any agent, in the form the client asked for."""
    if stream:
        frames = local_frames(header, text, include_usage)
        return Stream(frames, media_type="text/event-stream", headers=SSE_HEADERS)
    return Response(local_completion(text, header.id, header.created, header.model))


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


v1 = Router("/v1", route_handlers=[list_models, chat_completions], guards=[require_key])
probes = [health, ready]
