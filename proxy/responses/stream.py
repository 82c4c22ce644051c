"""The Responses API's SSE: `event:` and `data:` lines, `response.created` first, no `[DONE]`.

The response's id names Letta's run, which Letta's events carry, so the opening events wait for the
first event of the turn's run that is not a ping (a ping may be of a Letta request that was refused
and sent again); meanwhile a quiet stream gets keepalive comments.
"""

from collections.abc import Callable

import msgspec

from proxy.chat import protocol
from proxy.chat.encode import TurnTranslator
from proxy.errors import ProxyError
from proxy.letta.wire import LettaMessage
from proxy.responses import protocol as wire
from proxy.responses.encode import Header, ResponseEncoder

_encode = msgspec.json.Encoder().encode


def frames(events: list[wire.Event]) -> bytes:
    return b"".join(
        b"event: " + event.type.encode() + b"\ndata: " + _encode(event) + b"\n\n" for event in events
    )


class ResponseFramer:
    """Frames of one streamed response; `header` makes its header from the run id of the first event."""

    def __init__(self, header: Callable[[str | None], Header]) -> None:
        self._header = header
        self._encoder: ResponseEncoder | None = None
        self._opening: list[wire.Event] = []

    def opening(self) -> bytes:
        return b""

    def event(self, event: LettaMessage, delta: protocol.Delta | None) -> bytes:
        if self._encoder is None and event.message_type == "ping":
            return b""  # a ping may come from a Letta request refused and sent again: not the turn's run
        encoder = self._started(event.run_id)
        return frames([*self._take_opening(), *(encoder.feed(delta, event.id) if delta else ())])

    def closing(self, translator: TurnTranslator) -> bytes:
        encoder = self._started(None)
        return frames([*self._take_opening(), *encoder.finish(translator.finish_reason, translator.usage)])

    def failure(self, error: ProxyError) -> bytes:
        encoder = self._started(None)
        return frames([*self._take_opening(), *encoder.fail(error)])

    def _started(self, run_id: str | None) -> ResponseEncoder:
        if self._encoder is None:
            self._encoder = ResponseEncoder(self._header(run_id))
            self._opening = self._encoder.start()
        return self._encoder

    def _take_opening(self) -> list[wire.Event]:
        opening, self._opening = self._opening, []
        return opening
