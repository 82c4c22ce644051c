"""Response ids that need no database: the agent, the conversation and Letta's run, sealed per client key.

`resp_` + base64url(fields + tag). Each field is Letta's id, as 16 bytes when it is the usual
`<prefix>-<uuid>`, else its text. The tag is an HMAC keyed by the client's API key, so an id works only
for the key that made it, and no one can forge one that reaches another agent or conversation.
Item ids are Letta's own ids under OpenAI's prefixes (`msg_`, `fc_`, `rs_`).
"""

import base64
import binascii
import hashlib
import hmac
import re
import uuid
from dataclasses import dataclass

from proxy.errors import ProxyError

PREFIX = "resp_"
VERSION = 1
TAG_BYTES = 16
_UUID_FORM = 0x80  # flag on a field's length byte: the field is `<prefix>-<uuid>`, stored as 16 bytes
_FIELD_PREFIXES = ("agent", "conv", "run")


@dataclass(frozen=True, slots=True)
class ResponseRef:
    """What a response id stands for: a turn (`run`) in one history of one agent."""

    agent_id: str
    conversation_id: str | None
    run_id: str


def make_response_id(ref: ResponseRef, key: bytes) -> str:
    fields = (ref.agent_id, ref.conversation_id or "", ref.run_id)
    body = bytes([VERSION]) + b"".join(
        _pack(prefix, value) for prefix, value in zip(_FIELD_PREFIXES, fields, strict=True)
    )
    return PREFIX + base64.urlsafe_b64encode(body + _tag(body, key)).rstrip(b"=").decode()


def read_response_id(response_id: str, key: bytes, param: str = "previous_response_id") -> ResponseRef:
    """The turn a response id stands for; a 404 for one this key did not make, whatever else is wrong."""
    encoded = response_id.removeprefix(PREFIX)
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        raise not_found(response_id, param) from None
    body, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
    valid = response_id.startswith(PREFIX) and len(raw) > TAG_BYTES and body[0] == VERSION
    if not valid or not hmac.compare_digest(tag, _tag(body, key)):
        raise not_found(response_id, param)
    fields, at = [], 1
    for prefix in _FIELD_PREFIXES:
        value, at = _unpack(prefix, body, at)
        fields.append(value)
    agent_id, conversation_id, run_id = fields
    return ResponseRef(agent_id, conversation_id or None, run_id)


def item_id(prefix: str, letta_id: str) -> str:
    """An OpenAI item id from Letta's: `message-<uuid>` becomes `msg_<uuid hex>`, `call_<x>` `fc_<x>`."""
    parts = re.split(r"[-_]", letta_id, maxsplit=1)
    return f"{prefix}_{parts[-1].replace('-', '')}"


def not_found(response_id: str, param: str) -> ProxyError:
    return ProxyError(
        404,
        f"Response with id '{response_id[:100]}' not found.",
        code="response_not_found",
        param=param,
    )


def _tag(body: bytes, key: bytes) -> bytes:
    return hmac.new(key, b"letta-openai-proxy/response-id\0" + body, hashlib.sha256).digest()[:TAG_BYTES]


def _pack(prefix: str, value: str) -> bytes:
    head, dash, rest = value.partition("-")
    if head == prefix and dash:
        try:
            return bytes([_UUID_FORM | 16]) + uuid.UUID(rest).bytes
        except ValueError:
            pass
    data = value.encode()
    if len(data) >= _UUID_FORM:
        raise ValueError(f"a Letta id longer than {_UUID_FORM - 1} bytes cannot go into a response id")
    return bytes([len(data)]) + data


def _unpack(prefix: str, body: bytes, at: int) -> tuple[str, int]:
    """Only ever reached for a body this proxy sealed, so its layout is trusted."""
    head = body[at]
    size = head & ~_UUID_FORM
    data = body[at + 1 : at + 1 + size]
    if head & _UUID_FORM:
        return f"{prefix}-{uuid.UUID(bytes=data)}", at + 1 + size
    return data.decode(), at + 1 + size
