"""`create_app(settings)`: the Litestar application, with nothing built at import time."""

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide

from proxy.auth import load_keys
from proxy.errors import exception_handlers
from proxy.letta import Letta
from proxy.routes import probes, v1
from proxy.settings import Settings


def create_app(settings: Settings) -> Litestar:
    """One Letta client for the app's life, closed on shutdown; keys loaded (or generated) up front."""
    upstream = Letta(settings)
    return Litestar(
        route_handlers=[v1, *probes],
        dependencies={
            "letta": Provide(lambda: upstream, sync_to_thread=False, use_cache=True),
            "settings": Provide(lambda: settings, sync_to_thread=False, use_cache=True),
        },
        exception_handlers=exception_handlers,
        on_shutdown=[upstream.aclose],
        state=State({"client_keys": load_keys(settings)}),
        request_max_body_size=settings.proxy_max_body_bytes,
        cors_config=CORSConfig(allow_origins=settings.proxy_cors_origins)
        if settings.proxy_cors_origins
        else None,
        logging_config=None,
    )


def app_from_environment() -> Litestar:
    """The factory the ASGI server calls in its worker: settings come from the environment."""
    return create_app(Settings())
