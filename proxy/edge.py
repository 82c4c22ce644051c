"""The request body at the edge: what neither Granian nor Litestar does for it.

Neither has a deadline for a body that arrives slowly, so a key holder could drip one for as long as he
liked; and a body that cannot be read or decoded (cut off, a bad chunk size, invalid UTF-8, nesting
deeper than the decoder goes) reached Litestar as an unexpected exception, a 500. Here each is the
client's mistake: a 408 or a 400 in OpenAI's shape, with no traceback.
"""

import asyncio

from litestar import Request
from litestar.exceptions import SerializationException
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from proxy.errors import ProxyError

_CLOSE = {"connection": "close"}  # the rest of the body is never read: the connection cannot be reused


def body_deadline(app: ASGIApp, seconds: float) -> ASGIApp:
    """Wraps an ASGI app so that reading the request body fails once `seconds` have passed since the
    request's head arrived, and a body that ends early (Granian reports a cut-off or malformed body as a
    disconnect, so the two look alike) fails as a 400 instead of Litestar's 500. After the last body
    part, `receive` is passed through untouched: waiting for a disconnect then is not reading a body."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + seconds
        complete = False

        async def receive_body() -> ReceiveMessage:
            nonlocal complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise ProxyError(
                    408,
                    f"The request body did not arrive within {seconds:g} s.",
                    code="request_timeout",
                    headers=_CLOSE,
                ) from None
            if message["type"] == "http.disconnect":
                raise ProxyError(
                    400,
                    "The request body was cut off or malformed (shorter than its Content-Length, or a bad "
                    "chunked encoding).",
                    code="incomplete_body",
                    headers=_CLOSE,
                )
            complete = not message.get("more_body", False)
            return message

        await app(scope, receive_body, send)

    return guarded


class ProxyRequest(Request):
    """Litestar's request, whose JSON decoding lets two client mistakes escape as other exceptions than
    its SerializationException (which it answers as a 400): nesting too deep, and invalid UTF-8."""

    async def json(self) -> object:
        try:
            return await super().json()
        except RecursionError:
            raise SerializationException("JSON is malformed: nested too deeply") from None
        except UnicodeDecodeError:
            raise SerializationException("JSON is malformed: invalid UTF-8") from None
