"""`create_app(settings)`: the Litestar application, with nothing built at import time."""

from collections.abc import Awaitable, Callable

from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from proxy.agent_choice import AgentChoice
from proxy.auth import Client, load_clients
from proxy.chat import routes as chat_routes
from proxy.chat.serving import Chat
from proxy.edge import ProxyRequest, body_deadline
from proxy.error_responses import exception_handlers, json_not_found
from proxy.idempotency import Outcomes, idempotent
from proxy.letta import Letta
from proxy.observe import observe, watch_turns
from proxy.outcomes import MemoryOutcomes
from proxy.responses import routes as responses_routes
from proxy.responses.serving import Responses
from proxy.routes import metrics, probes, require_key
from proxy.sessions import SessionStore, open_store
from proxy.settings import Settings
from proxy.turn_runner import TurnRunner
from proxy.turns import TurnQueue
from proxy.user_agents import UserAgents

OPENAPI = OpenAPIConfig(
    title="letta-openai-proxy",
    version="0.1.0",
    description="Letta agents as OpenAI models: the OpenAI routes the proxy serves, and its probes.",
    security=[{"bearer": []}, {"api_key": []}],
    components=Components(
        security_schemes={
            "bearer": SecurityScheme(type="http", scheme="bearer"),
            "api_key": SecurityScheme(type="apiKey", name="X-Api-Key", security_scheme_in="header"),
        }
    ),
    path="/schema",
)


def _singleton(value: object) -> Provide:
    return Provide(lambda: value, sync_to_thread=False, use_cache=True)


Hook = Callable[[], Awaitable[None]]


def _shared_state(settings: Settings) -> tuple[SessionStore, TurnQueue, Outcomes, list[Hook], list[Hook]]:
    """What replicas must agree on: in Redis, over one client, when PROXY_REDIS_URL is set; else in memory.

    Redis's client is imported only then: its memory is paid only where it is used (bench/README.md).
    """
    if not settings.proxy_redis_url:
        store = open_store(None, settings.proxy_session_max_entries, settings.proxy_session_idle_seconds)
        outcomes = MemoryOutcomes(settings.proxy_idempotency_seconds, settings.proxy_idempotency_max_entries)
        return store, TurnQueue(settings.proxy_queue_timeout), outcomes, [], [store.aclose]
    from proxy.redis_outcomes import RedisOutcomes
    from proxy.redis_store import RedisStore, connect
    from proxy.redis_turns import RedisTurns

    client = connect(settings.proxy_redis_url)
    shared = RedisStore(
        client,
        idle_seconds=settings.proxy_session_idle_seconds,
        max_entries_per_namespace=settings.proxy_session_max_entries,
    )
    turns = RedisTurns(client, settings.proxy_queue_timeout, settings.proxy_lock_lease_seconds)
    outcomes = RedisOutcomes(client, settings.proxy_idempotency_seconds, settings.proxy_lock_lease_seconds)
    return shared, turns, outcomes, [turns.start], [turns.aclose, shared.aclose]


V1 = Router(
    "/v1",
    route_handlers=[*chat_routes.route_handlers, *responses_routes.route_handlers],
    guards=[require_key],
)


def from_environment() -> Litestar:
    """The app of one of several workers (PROXY_WORKERS), each reading the settings the command checked."""
    return create_app(Settings())


def create_app(settings: Settings, clients: list[Client] | None = None) -> Litestar:
    """One Letta client and one session store for the app's life, closed on shutdown; keys loaded up front
    (or given, by the command that has loaded them already to check them before anything else)."""
    letta = Letta(settings)
    store, turns, outcomes, on_startup, on_shutdown = _shared_state(settings)
    clients = load_clients(settings) if clients is None else clients
    choice = AgentChoice(
        letta,
        store,
        settings.proxy_model_scope,
        settings.proxy_default_agent,
        openwebui_chats=settings.proxy_openwebui_chat_id,
        user_agents=UserAgents(letta, settings, turns),
    )
    runner = TurnRunner(letta, choice, turns, settings)
    chat = Chat(runner, choice, settings)
    watch_turns(turns)
    app = Litestar(
        route_handlers=[V1, metrics, *probes],
        dependencies={
            "letta": _singleton(letta),
            "choice": _singleton(choice),
            "chat": _singleton(chat),
            "responses": _singleton(Responses(runner, letta, choice, settings)),
        },
        exception_handlers=exception_handlers,
        after_request=json_not_found,
        on_startup=[letta.announce, *on_startup],
        on_shutdown=[letta.aclose, *on_shutdown],
        state=State({"clients": clients}),
        request_max_body_size=settings.proxy_max_body_bytes,
        cors_config=CORSConfig(allow_origins=settings.proxy_cors_origins)
        if settings.proxy_cors_origins
        else None,
        logging_config=None,
        openapi_config=OPENAPI,
        request_class=ProxyRequest,
    )
    # Around Litestar's whole handler, not per route: requests that match no route are observed too.
    # Idempotency-Key inside the body deadline (it reads the body first) and outside every route.
    kept = idempotent(
        app.asgi_handler,
        outcomes,
        clients,
        settings.proxy_max_body_bytes,
        settings.proxy_lock_lease_seconds / 3,
    )
    app.asgi_handler = observe(body_deadline(kept, settings.proxy_body_timeout_seconds))
    return app
