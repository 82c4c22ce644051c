"""auth.py: which keys are accepted, how a request presents one, and the generated key's file."""

import json
import os
import stat
from pathlib import Path

import pytest

from proxy.auth import Client, identify, load_clients, presented_key
from tests.conftest import make_settings


def test_configured_keys_are_the_accepted_ones(tmp_path: Path) -> None:
    """PROXY_API_KEYS lists the keys; no key file is written then."""
    settings = make_settings(tmp_path, proxy_api_keys="sk-a, sk-b")
    assert load_clients(settings) == [Client(b"sk-a"), Client(b"sk-b")]
    assert not settings.proxy_api_key_file.exists()


def test_without_keys_one_is_generated_into_a_private_file_and_reused(tmp_path: Path) -> None:
    """No configured key means a generated one, mode 0600, the same on the next start."""
    settings = make_settings(tmp_path, proxy_api_keys="", proxy_api_key_file=tmp_path / "dir" / "key.json")
    clients = load_clients(settings)
    path = settings.proxy_api_key_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())["api_key"]
    assert clients == [Client(stored.encode())] and len(stored) > 40
    assert load_clients(settings) == clients


def test_the_generated_key_is_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The log names the key file, not the key."""
    caplog.set_level("DEBUG")
    settings = make_settings(tmp_path, proxy_api_keys="")
    [client] = load_clients(settings)
    assert str(settings.proxy_api_key_file.name) in caplog.text
    assert client.key.decode() not in caplog.text


def test_an_unreadable_key_file_stops_start_up(tmp_path: Path) -> None:
    """A corrupt key file is an error to fix, not a reason to open the door or make a new key."""
    path = tmp_path / "key.json"
    path.write_text("not json")
    with pytest.raises(SystemExit):
        load_clients(make_settings(tmp_path, proxy_api_keys="", proxy_api_key_file=path))


@pytest.mark.parametrize(
    "headers, key",
    [
        ({"authorization": "Bearer sk-1"}, b"sk-1"),
        ({"authorization": "bearer sk-1"}, b"sk-1"),
        ({"x-api-key": "sk-2"}, b"sk-2"),
        ({"authorization": "Bearer sk-1", "x-api-key": "sk-1"}, b"sk-1"),
        ({"authorization": "Basic x", "x-api-key": "sk-2"}, b"sk-2"),
    ],
)
def test_the_presented_key_comes_from_bearer_or_x_api_key(headers: dict[str, str], key: bytes) -> None:
    """Only the two documented headers carry a key."""
    assert presented_key(headers.items()) == key


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Basic sk-1"},
        {"authorization": "Bearer "},
        {"authorization": "Bearer"},
        {"authorization": "sk-1"},
        {"authorization": "Bearer  sk-1"},
        {"authorization": "Bearer sk-1 extra"},
        {"x-api-key": "sk-1\t"},
        {"x-api-key": ""},
        {"authorization": "Bearer sk-1", "x-api-key": "sk-2"},
        {"authorization": "Bearer " + "k" * 257},
    ],
)
def test_malformed_or_ambiguous_keys_are_not_presented(headers: dict[str, str]) -> None:
    """Wrong scheme, empty bearer, whitespace, two disagreeing headers, over-long keys: no key at all."""
    assert presented_key(headers.items()) is None


@pytest.mark.parametrize(
    "headers",
    [
        [("authorization", "Bearer sk-1"), ("Authorization", "Bearer sk-2")],
        [("authorization", "Bearer sk-1"), ("authorization", "Bearer sk-1")],
        [("authorization", "Basic eA=="), ("authorization", "Bearer sk-1")],
        [("x-api-key", "sk-1"), ("X-Api-Key", "sk-2")],
        [("authorization", "Bearer sk-1"), ("x-api-key", "sk-1"), ("x-api-key", "sk-1")],
    ],
)
def test_a_key_header_sent_twice_is_refused(headers: list[tuple[str, str]]) -> None:
    """Authorization or X-Api-Key repeated is ambiguous, whatever the values: no key at all."""
    assert presented_key(headers) is None


def test_only_an_exact_key_is_accepted() -> None:
    """No prefix, suffix or empty key matches; the matching key's client is returned."""
    clients = [Client(b"sk-one"), Client(b"sk-two", frozenset({"bot"}))]
    assert identify(b"sk-two", clients) == clients[1]
    assert not any(identify(k, clients) for k in (None, b"", b"sk-on", b"sk-one ", b"SK-ONE", b"sk-onee"))


def test_keys_may_be_scoped_to_agents(tmp_path: Path) -> None:
    """`key:agentA|agentB` limits a key to those agents (names or ids); a bare key reaches all."""
    [scoped, free] = load_clients(make_settings(tmp_path, proxy_api_keys="sk-a:support|agent-7, sk-b"))
    assert scoped == Client(b"sk-a", frozenset({"support", "agent-7"})) and free == Client(b"sk-b")
    assert scoped.may_use("agent-1", "support") and scoped.may_use("agent-7", "other")
    assert not scoped.may_use("agent-1", "sales") and free.may_use("agent-1", "sales")


@pytest.mark.parametrize("entry", ["sk-a:", ":bot", "sk-a: | "])
def test_malformed_scoped_keys_stop_start_up(tmp_path: Path, entry: str) -> None:
    """A scope with no agent, or a scope with no key, is a configuration error, not an open key."""
    with pytest.raises(SystemExit):
        load_clients(make_settings(tmp_path, proxy_api_keys=entry))


def test_tenant_namespaces_differ_and_hide_the_key() -> None:
    """Session state is filed under a digest of the key: distinct per key, and not the key itself."""
    one, two = Client(b"sk-one"), Client(b"sk-two")
    assert one.namespace != two.namespace and "sk-one" not in one.namespace


def test_an_unwritable_key_file_stops_start_up_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No writable place for the generated key: a clear message naming the setting, not a traceback."""

    def read_only(*_: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(SystemExit) as caught:
        load_clients(make_settings(tmp_path, proxy_api_keys=""))
    assert "PROXY_API_KEY_FILE" in str(caught.value.code) and "Permission denied" in str(caught.value.code)


@pytest.mark.parametrize(
    "key",
    ["sk-caf€", "sk-" + "k" * 254, "sk-a\u00a0b", "sk-\x01", "sk-a\tb"],
    ids=["not-latin-1", "too-long", "nbsp", "control", "tab"],
)
def test_a_configured_key_no_request_can_send_stops_start_up_without_being_named(
    tmp_path: Path, key: str
) -> None:
    """Such a key would never match: start-up stops with one line naming PROXY_API_KEYS, not the key."""
    with pytest.raises(SystemExit) as caught:
        load_clients(make_settings(tmp_path, proxy_api_keys=f"sk-fine,{key}:bot"))
    message = str(caught.value.code)
    assert message.startswith("invalid PROXY_API_KEYS entry 2:") and "\n" not in message
    assert key not in message


def test_a_latin_1_key_is_accepted_as_a_request_sends_it(tmp_path: Path) -> None:
    """A header byte 0xe9 reads as 'é' (latin-1): a configured 'é' key matches it."""
    [client] = load_clients(make_settings(tmp_path, proxy_api_keys="sk-caf\u00e9"))
    assert identify(presented_key([("x-api-key", b"sk-caf\xe9".decode("latin-1"))]), [client]) == client


def test_a_key_file_holding_a_key_no_request_can_send_stops_start_up(tmp_path: Path) -> None:
    """The same rule for the kept key: the message names the file and the setting, not the key."""
    path = tmp_path / "key.json"
    path.write_text(json.dumps({"api_key": "sk with space"}))
    path.chmod(0o600)
    with pytest.raises(SystemExit) as caught:
        load_clients(make_settings(tmp_path, proxy_api_keys="", proxy_api_key_file=path))
    assert "PROXY_API_KEY_FILE" in str(caught.value.code) and "sk with space" not in str(caught.value.code)


@pytest.mark.parametrize("mode, warned", [(0o600, False), (0o640, True), (0o604, True), (0o620, True)])
def test_a_key_file_open_to_other_users_is_used_with_a_warning_naming_its_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, warned: bool
) -> None:
    """Group or other permissions on the key file: a warning with the path, never the key."""
    path = tmp_path / "key.json"
    path.write_text(json.dumps({"api_key": "sk-kept-key"}))
    path.chmod(mode)
    caplog.set_level("INFO")
    assert load_clients(make_settings(tmp_path, proxy_api_keys="", proxy_api_key_file=path)) == [
        Client(b"sk-kept-key")
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert bool(warnings) == warned
    assert all(str(path) in w and "sk-kept-key" not in w for w in warnings)
