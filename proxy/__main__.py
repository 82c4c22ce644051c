"""`python -m proxy` and the `letta-openai-proxy` command: read the settings, serve the app."""

import logging
import sys

import uvicorn
from pydantic import ValidationError

from proxy.app import create_app
from proxy.settings import Settings, describe_error

log = logging.getLogger("proxy")


def main() -> None:
    try:
        settings = Settings()
    except ValidationError as error:
        sys.exit(describe_error(error))
    logging.basicConfig(
        level=settings.proxy_log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream call is noise
    app = create_app(settings)
    log.info(
        "listening on http://%s:%d, forwarding to Letta at %s",
        settings.proxy_host, settings.proxy_port, settings.letta_base_url,
    )
    uvicorn.run(
        app, host=settings.proxy_host, port=settings.proxy_port, log_level=settings.proxy_log_level,
        log_config=None, server_header=False,
    )


if __name__ == "__main__":
    main()
