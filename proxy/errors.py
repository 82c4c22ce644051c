"""The errors the proxy raises, each with everything its OpenAI body and status need. Pure: the HTTP
answers they become are proxy/error_responses.py's, so translation code raising them imports no web
framework."""

import msgspec


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct):
    """OpenAI's error body, the same for every API and status."""

    error: ErrorDetail


class ProxyError(Exception):
    """An error with everything its OpenAI body and status need.

    `retry_safe` is False once the turn may have reached the agent: resending it would write it twice
    into the agent's memory, so the response tells SDKs not to retry.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry_safe: bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retry_safe = retry_safe
        self.headers = headers or {}

    def detail(self) -> ErrorDetail:
        return ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ProxyError:
    return ProxyError(400, message, param=param, code=code)


def upstream_failure(message: str, code: str | None = None) -> ProxyError:
    """A failure inside the agent's turn: the turn reached Letta, so it must not be resent."""
    return ProxyError(502, message, type="server_error", code=code, retry_safe=False)


def model_not_found(model: str) -> ProxyError:
    return ProxyError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


def unknown_url() -> ProxyError:
    """What any route that does not exist answers; it names no path, so nothing sent is echoed back."""
    return ProxyError(404, "Unknown URL. The OpenAI routes are under /v1; /schema lists every route.")


def unauthorized() -> ProxyError:
    return ProxyError(
        401,
        "Missing or invalid API key: send it as 'Authorization: Bearer <key>' or 'X-Api-Key: <key>'.",
        type="authentication_error",  # what LiteLLM and others read to raise an authentication error
        code="invalid_api_key",
    )


def unavailable(message: str, code: str) -> ProxyError:
    """A shared service the turn needs is down, before anything was sent: safe to retry in a second."""
    return ProxyError(503, message, type="server_error", code=code, headers={"Retry-After": "1"})
