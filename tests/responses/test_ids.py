"""responses/ids.py: an id carries its turn, works only for the key that made it, and cannot be forged."""

import base64

import pytest

from proxy.errors import ProxyError
from proxy.responses.ids import ResponseRef, item_id, make_response_id, read_response_id

KEY = b"sk-one"
REF = ResponseRef(
    "agent-0b9e5f2c-6f0e-4a0e-9d0a-3a8f7c1e2d4b",
    "conv-e554fd60-023f-4a0c-9447-1924e203858b",
    "run-8f659843-644e-4892-bc23-bbb21f27fc82",
)


@pytest.mark.parametrize(
    "ref",
    [
        REF,
        ResponseRef(REF.agent_id, None, REF.run_id),
        ResponseRef("my-agent", "conv-not-a-uuid", ""),  # ids in another form travel as text
    ],
)
def test_an_id_gives_back_the_turn_it_was_made_for(ref: ResponseRef) -> None:
    """Agent, conversation (or none) and run come back exactly, from a short `resp_` id."""
    response_id = make_response_id(ref, KEY)
    assert response_id.startswith("resp_") and len(response_id) < 100
    assert read_response_id(response_id, KEY) == ref


def _refused(response_id: str, key: bytes = KEY) -> ProxyError:
    with pytest.raises(ProxyError) as raised:
        read_response_id(response_id, key)
    assert (raised.value.status, raised.value.code) == (404, "response_not_found")
    return raised.value


def test_another_key_cannot_use_an_id() -> None:
    """An id works only for the key that made it: for any other it does not exist."""
    _refused(make_response_id(REF, KEY), b"sk-two")


def test_a_changed_id_is_refused() -> None:
    """Altering any byte of the sealed part (say, to reach another conversation) breaks the seal."""
    response_id = make_response_id(REF, KEY)
    raw = bytearray(base64.urlsafe_b64decode(response_id[5:] + "=" * (-len(response_id[5:]) % 4)))
    for at in (1, 20, len(raw) - 1):
        changed = raw.copy()
        changed[at] ^= 1
        _refused("resp_" + base64.urlsafe_b64encode(bytes(changed)).rstrip(b"=").decode())


@pytest.mark.parametrize(
    "response_id", ["", "resp_", "resp_!!!", "resp_abc", "chatcmpl-123", "resp_" + "A" * 80]
)
def test_garbage_is_not_found_not_a_crash(response_id: str) -> None:
    """Whatever a client sends, the answer is a clean 404."""
    error = _refused(response_id)
    assert error.param == "previous_response_id"


def test_item_ids_derive_from_lettas() -> None:
    """Letta's message and tool-call ids under OpenAI's prefixes, so they are stable across reads."""
    assert (
        item_id("msg", "message-ba7e6957-6b44-4797-9fb1-b2ecd3eecc0f")
        == "msg_ba7e69576b4447979fb1b2ecd3eecc0f"
    )
    assert item_id("fc", "call_4b32ae8f8c024ffa8c26") == "fc_4b32ae8f8c024ffa8c26"
