"""The Litestar handlers that answer every failure, the proxy's own and the framework's, in OpenAI's shape."""

import logging
import re

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

from proxy.errors import ErrorBody, ProxyError, bad_request, unknown_url
from proxy.observe import upstream_error

log = logging.getLogger("proxy")


def _respond(error: ProxyError) -> Response[bytes]:
    if error.status in (502, 503, 504):
        upstream_error(error.code)
    headers = error.headers if error.retry_safe else {**error.headers, "x-should-retry": "false"}
    body = msgspec.json.encode(ErrorBody(error=error.detail()))
    return Response(body, status_code=error.status, media_type="application/json", headers=headers)


def _proxy_error(_: Request, exc: ProxyError) -> Response[bytes]:
    return _respond(exc)


_MISSING_FIELD = re.compile(r"missing required field `([^`]+)`")


def _validation_error(_: Request, exc: ValidationException) -> Response[bytes]:
    """Litestar's own body validation: name the first offending field, as OpenAI does."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    first = extra[0] if extra and isinstance(extra[0], dict) else {}
    message = str(first.get("message") or exc.detail)
    param = first.get("key")
    if param == "data":  # Litestar's name for the whole body: name the missing field instead
        missing = _MISSING_FIELD.search(message)
        param = missing.group(1) if missing else None
    if param:
        message = f"Invalid value for '{param}': {message}"
    return _respond(bad_request(message, param=param))


def _http_error(_: Request, exc: HTTPException) -> Response[bytes]:
    """Routing, method and size errors that Litestar raises before our handlers run."""
    if isinstance(exc, NotFoundException):
        return _respond(unknown_url())
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return _respond(ProxyError(exc.status_code, str(exc.detail), type=kind, headers=exc.headers))


def json_not_found(response: Response) -> Response:
    """An app-wide `after_request` hook. Litestar's OpenAPI router answers an unknown /schema/ path with
    an HTML page it returns rather than raises: it becomes the same JSON 404 as any unknown route."""
    if response.status_code == 404 and response.media_type != MediaType.JSON:
        return _respond(unknown_url())
    return response


def _unexpected(request: Request, exc: Exception) -> Response[bytes]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _respond(
        ProxyError(
            HTTP_500_INTERNAL_SERVER_ERROR,
            "Internal error in the proxy.",
            type="server_error",
            retry_safe=False,
        )
    )


exception_handlers: ExceptionHandlersMap = {
    ProxyError: _proxy_error,
    ValidationException: _validation_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
