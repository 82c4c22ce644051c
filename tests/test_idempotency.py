"""idempotency.py: a repeated Idempotency-Key gets the first outcome and never a second run, in memory
and in a real redis-server alike; other bodies are refused, failures are not kept."""

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.auth import Client
from proxy.idempotency import Outcomes, idempotent
from proxy.outcomes import MemoryOutcomes
from proxy.redis_outcomes import RedisOutcomes
from proxy.redis_store import connect
from tests.redis_server import running_redis

KEYS = [Client(b"sk-one"), Client(b"sk-two")]
Reply = tuple[int, dict[str, str], bytes]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.slow)])
def outcomes(request: pytest.FixtureRequest) -> Callable[[], Outcomes]:
    """A factory: in memory one store; in Redis a new client each time, as another replica's."""
    if request.param == "memory":
        store = MemoryOutcomes(60, 100)
        return lambda: store
    url = request.getfixturevalue("redis_url")
    prefix = f"test-{uuid.uuid4().hex}:"
    return lambda: RedisOutcomes(connect(url), 60, 3, prefix=prefix)


class App:
    """An ASGI app that counts its runs and answers `parts` (slowly), with `status`."""

    def __init__(self, status: int = 200, parts: tuple[bytes, ...] = (b'{"ok": 1}',), pause: float = 0.05):
        self.runs = 0
        self.status, self.parts, self.pause = status, parts, pause

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.runs += 1
        body = (await receive())["body"]
        await send({"type": "http.response.start", "status": self.status, "headers": [(b"x-body", body)]})
        for part in self.parts:
            await asyncio.sleep(self.pause)
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def call(app: Any, body: bytes = b"{}", key: str | None = "k-1", client: bytes = b"sk-one") -> Reply:
    headers = [(b"authorization", b"Bearer " + client)]
    if key is not None:
        headers.append((b"idempotency-key", key.encode()))
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers}
    sent = False
    out: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    await app(scope, receive, send)
    start = out[0]
    return (
        start["status"],
        {k.decode(): v.decode() for k, v in start["headers"]},
        b"".join(m.get("body", b"") for m in out[1:]),
    )


def wrap(app: App, outcomes: Callable[[], Outcomes]) -> Any:
    return idempotent(app, outcomes(), KEYS, 1_000_000, 1.0)


def test_repeats_at_once_and_later_get_the_first_outcome_from_one_run(
    outcomes: Callable[[], Outcomes],
) -> None:
    """Two at once (on two "replicas") and one later: one run, three identical answers, a stream's
    parts replayed as they came."""
    app = App(parts=(b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"))
    one, two = wrap(app, outcomes), wrap(app, outcomes)

    async def main() -> list[Reply]:
        first = await asyncio.gather(call(one), call(two))
        return [*first, await call(two)]

    replies = asyncio.run(main())
    assert app.runs == 1
    assert {r[2] for r in replies} == {b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"}
    assert all(r[0] == 200 and r[1]["x-body"] == "{}" for r in replies)
    assert sorted(r[1].get("idempotent-replayed", "-") for r in replies) == ["-", "true", "true"]


def test_another_body_with_the_same_key_is_a_422(outcomes: Callable[[], Outcomes]) -> None:
    """The key names one request: another body with it is refused, naming Idempotency-Key."""
    app = App()
    wrapped = wrap(app, outcomes)

    async def main() -> Reply:
        await call(wrapped, b'{"a": 1}')
        return await call(wrapped, b'{"a": 2}')

    status, _, body = asyncio.run(main())
    assert status == 422 and app.runs == 1
    error = json.loads(body)["error"]
    assert (error["param"], error["code"]) == ("Idempotency-Key", "idempotency_key_reused")


@pytest.mark.parametrize(
    "failure",
    [{"status": 503}, {"parts": (b'data: {"error":{"message":"x"}}\n\n', b"data: [DONE]\n\n")}],
    ids=["refused", "stream-error"],
)
def test_a_failed_outcome_is_not_kept(outcomes: Callable[[], Outcomes], failure: dict[str, Any]) -> None:
    """A refusal, or a stream that ended in an error event: the retry really runs again."""
    app = App(**failure)
    wrapped = wrap(app, outcomes)

    async def main() -> None:
        await call(wrapped)
        await call(wrapped)

    asyncio.run(main())
    assert app.runs == 2


def test_keys_of_different_clients_and_requests_without_a_key_are_apart(
    outcomes: Callable[[], Outcomes],
) -> None:
    """The same Idempotency-Key from another client key is another request; no header, no keeping."""
    app = App()
    wrapped = wrap(app, outcomes)

    async def main() -> None:
        await call(wrapped)
        await call(wrapped, client=b"sk-two")
        await call(wrapped, key=None)
        await call(wrapped, key=None)

    asyncio.run(main())
    assert app.runs == 4


def test_a_bad_key_is_a_400(outcomes: Callable[[], Outcomes]) -> None:
    """An Idempotency-Key too long to be one: a 400 naming it, and nothing runs."""
    app = App()
    status, _, body = asyncio.run(call(wrap(app, outcomes), key="x" * 300))
    assert status == 400 and app.runs == 0
    assert json.loads(body)["error"]["param"] == "Idempotency-Key"


@pytest.mark.slow
def test_redis_down_is_a_503_and_nothing_runs(tmp_path: Path) -> None:
    """The store unreachable: a clear 503, and the request never reaches the app (or the agent)."""
    app = App()
    with running_redis(tmp_path) as server:
        server.stop()
        status, _, body = asyncio.run(
            call(idempotent(app, RedisOutcomes(connect(server.url), 60, 3), KEYS, 10**6, 1))
        )
    assert status == 503 and app.runs == 0
    assert json.loads(body)["error"]["code"] == "idempotency_unavailable"
