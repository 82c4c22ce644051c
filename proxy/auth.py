"""Client keys: which ones are accepted, and whether a request carries one of them.

There is never an open door: with no keys configured, one is generated once and kept in a private file.
"""

import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from proxy.settings import Settings

log = logging.getLogger("proxy")


MAX_KEY_LENGTH = 256
_PRESENTABLE = f"a key is 1 to {MAX_KEY_LENGTH} printable latin-1 characters, without whitespace"


def presentable(key: str) -> bool:
    """Whether a request could carry this key: header values are latin-1 text, and `presented_key`
    refuses whitespace and over-long keys."""
    return (
        0 < len(key) <= MAX_KEY_LENGTH
        and key.isprintable()
        and not any(char.isspace() for char in key)
        and all(ord(char) < 256 for char in key)
    )


def _read_key_file(path: Path) -> str | None:
    try:
        key = json.loads(path.read_text())["api_key"]
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(
            f"cannot read the key file {path} (PROXY_API_KEY_FILE): {exc.__class__.__name__}"
        ) from None
    if not isinstance(key, str) or not key:
        raise SystemExit(f"the key file {path} holds no api_key")
    if not presentable(key):
        raise SystemExit(
            f"the key file {path} (PROXY_API_KEY_FILE) holds a key no request can send: {_PRESENTABLE}"
        )
    if mode & 0o077:
        log.warning("the key file %s is open to other users: make it private (chmod 600)", path)
    return key


def _write_key_file(path: Path, key: str) -> None:
    """Created with mode 0600 from the start, so the key is never readable by others, even briefly."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise SystemExit(f"cannot write the key file {path} (PROXY_API_KEY_FILE): {exc.strerror}") from None
    with os.fdopen(fd, "w") as file:
        json.dump({"api_key": key}, file)


@dataclass(frozen=True, slots=True)
class Client:
    """One accepted key, what it may reach, and a name for its state that does not reveal the key."""

    key: bytes
    agents: frozenset[str] | None = None  # agent names or ids; None: every exposed agent

    @property
    def namespace(self) -> str:
        return hashlib.sha256(self.key).hexdigest()[:32]

    def may_use(self, agent_id: str, agent_name: str) -> bool:
        return self.agents is None or agent_id in self.agents or agent_name in self.agents


def _client(number: int, entry: str) -> Client:
    """`key` or `key:agentA|agentB`: a key scoped to some agents. A key no request could present stops
    start-up rather than never matching; the message gives its position, never the key."""
    key, scoped, agents = entry.partition(":")
    names = frozenset(name.strip() for name in agents.split("|") if name.strip())
    if not key or (scoped and not names):
        raise SystemExit(f"invalid PROXY_API_KEYS entry {number}: write key or key:agentA|agentB")
    if not presentable(key):
        raise SystemExit(f"invalid PROXY_API_KEYS entry {number}: {_PRESENTABLE}")
    return Client(key.encode(), names if scoped else None)


def load_clients(settings: Settings) -> list[Client]:
    """The accepted keys: the configured ones, or else the generated one (made on first start)."""
    if settings.proxy_api_keys:
        return [_client(n, entry.get_secret_value()) for n, entry in enumerate(settings.proxy_api_keys, 1)]
    path = settings.proxy_api_key_file
    key = _read_key_file(path)
    if key is None:
        key = "sk-letta-" + secrets.token_urlsafe(32)
        _write_key_file(path, key)
        log.warning("PROXY_API_KEYS is unset: generated a client key in %s", path.resolve())
    else:
        log.info("PROXY_API_KEYS is unset: using the client key kept in %s", path.resolve())
    return [Client(key.encode())]


def presented_key(headers: Iterable[tuple[str, str]]) -> bytes | None:
    """The key from `Authorization: Bearer <key>` or `X-Api-Key`; None when absent or ambiguous.

    `headers` are every (name, value) pair, repeats included. Either header sent twice, or both with
    different keys, is refused rather than resolved, as is a key with whitespace in it or one too long
    to be ours (so a huge header costs no comparison time).
    """
    authorization: list[str] = []
    api_key: list[str] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == "authorization":
            authorization.append(value)
        elif lowered == "x-api-key":
            api_key.append(value)
    if len(authorization) > 1 or len(api_key) > 1:
        return None
    scheme, _, bearer = (authorization or [""])[0].partition(" ")
    candidates = {key for key in (bearer if scheme.lower() == "bearer" else None, *api_key) if key}
    if len(candidates) != 1:
        return None
    key = candidates.pop()
    if len(key) > MAX_KEY_LENGTH or any(char.isspace() for char in key):
        return None
    return key.encode()


def identify(key: bytes | None, clients: list[Client]) -> Client | None:
    """Compares against every key in constant time, so timing tells nothing about which one nearly matched."""
    if key is None:
        return None
    found = None
    for client in clients:
        if hmac.compare_digest(key, client.key):
            found = client
    return found
