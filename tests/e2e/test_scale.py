"""End to end on the real Letta with a real redis-server and three proxy processes sharing it: one turn
at a time per agent across processes, a killed holder, Redis restarted, and Idempotency-Key."""

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from letta_client import Letta
from letta_client.types import AgentState

from tests.e2e.letta_history import messages, runs, utc
from tests.proxy_process import ProxyProcess, running_proxy
from tests.redis_server import RedisServer, running_redis

KEY = "sk-scale-" + uuid.uuid4().hex
LEASE = 2.0  # PROXY_LOCK_LEASE_SECONDS of the processes here
HOLD = 4.0  # seconds the slow relay holds a turn on its way to Letta


def settings(letta: str, redis_url: str) -> dict[str, str]:
    return {
        "LETTA_BASE_URL": letta,
        "PROXY_REDIS_URL": redis_url,
        "PROXY_LOCK_LEASE_SECONDS": str(LEASE),
        "PROXY_AGENT_CACHE_SECONDS": "0",
        "PROXY_QUEUE_TIMEOUT": "60",
    }


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def replicas(
    letta_url: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ProxyProcess]]:
    """Three proxy processes sharing one Redis, as three replicas behind a load balancer."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                running_proxy(tmp_path_factory.mktemp("p"), KEY, **settings(letta_url, redis_server.url))
            )
            for _ in range(3)
        ]


def chat(proxy: ProxyProcess, agent: str, text: str, timeout: float = 90, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{proxy.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}", **headers},
        json={"model": agent, "messages": [{"role": "user", "content": text}]},
        timeout=timeout,
    )


def assert_each_answer_follows_its_message(history: list[tuple[str, str]]) -> None:
    """User and assistant messages alternate, each answer echoing the message just before it."""
    assert [kind for kind, _ in history] == ["user_message", "assistant_message"] * (len(history) // 2)
    for (_, asked), (_, answered) in zip(history[::2], history[1::2], strict=True):
        assert answered == f"Echo: {asked}"


def twelve_at_once(replicas: list[ProxyProcess], agent: str, **headers: str) -> list[str]:
    texts = [f"turn-{n}-{uuid.uuid4().hex[:6]}" for n in range(12)]
    with ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(lambda n: chat(replicas[n % 3], agent, texts[n], **headers), range(12)))
    assert [r.status_code for r in replies] == [200] * 12, [r.text for r in replies]
    assert [r.json()["choices"][0]["message"]["content"] for r in replies] == [f"Echo: {t}" for t in texts]
    return texts


def test_twelve_turns_to_one_agent_over_three_processes_never_interleave(
    replicas: list[ProxyProcess], letta: Letta, make_agent: Callable[[], AgentState]
) -> None:
    """All twelve answered, the agent's history keeps each message followed by its own answer, and
    Letta's runs for the agent never overlap in time."""
    agent = make_agent()
    texts = twelve_at_once(replicas, agent.name)
    history = [(kind, text) for kind, text, _ in messages(letta, agent.id)]
    assert_each_answer_follows_its_message(history)
    assert sorted(text for kind, text in history if kind == "user_message") == sorted(texts)
    turns = runs(letta, agent.id)
    assert len(turns) == 12
    for earlier, later in zip(turns, turns[1:], strict=False):
        assert utc(earlier.completed_at) <= utc(later.created_at), "two turns of one agent ran at once"


def test_twelve_turns_in_one_conversation_over_three_processes_never_interleave(
    replicas: list[ProxyProcess], letta: Letta, make_agent: Callable[[], AgentState]
) -> None:
    """The same through one Letta conversation (one chat key): one conversation, no interleaving."""
    agent = make_agent()
    texts = twelve_at_once(replicas, agent.name, **{"X-Letta-Chat-Key": "shared-chat"})
    (conversation,) = letta.conversations.list(agent_id=agent.id)
    history = []
    for message in letta.conversations.messages.list(conversation.id, limit=100, order="asc"):
        if message.message_type in ("user_message", "assistant_message"):
            content = message.content
            text = content if isinstance(content, str) else "".join(getattr(p, "text", "") for p in content)
            history.append((message.message_type, text))
    assert_each_answer_follows_its_message(history)
    assert sorted(text for kind, text in history if kind == "user_message") == sorted(texts)


def test_the_same_idempotency_key_twice_at_once_and_later_is_one_turn(
    replicas: list[ProxyProcess], letta: Letta, make_agent: Callable[[], AgentState]
) -> None:
    """Twice at once to two replicas, once more later to a third: one user message in Letta's history,
    three identical answers."""
    agent = make_agent()
    text = f"once-{uuid.uuid4().hex[:6]}"
    same = {"Idempotency-Key": uuid.uuid4().hex}
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda n: chat(replicas[n], agent.name, text, **same), range(2)))
    replies.append(chat(replicas[2], agent.name, text, **same))
    assert [r.status_code for r in replies] == [200] * 3
    assert len({r.content for r in replies}) == 1
    assert replies[0].json()["choices"][0]["message"]["content"] == f"Echo: {text}"
    assert [t for kind, t, _ in messages(letta, agent.id) if kind == "user_message"] == [text]


@contextlib.contextmanager
def slow_relay(upstream: str) -> Iterator[str]:
    """A TCP relay to Letta that holds every turn (a POST to .../messages...) for HOLD seconds before
    passing it on, and drops it if its client dies meanwhile: a turn that is held, in flight."""
    target = urlsplit(upstream)
    ready = threading.Event()
    port: list[int] = []
    stop: list[Callable[[], object]] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: bool) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if hold and b"/messages" in data and data.startswith(b"POST"):
                    await asyncio.sleep(HOLD)
                    if reader.at_eof():
                        break
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(target.hostname, target.port)
        await asyncio.gather(pipe(client_r, up_w, True), pipe(up_r, client_w, False))

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port.append(server.sockets[0].getsockname()[1])
        serving, loop = asyncio.current_task(), asyncio.get_running_loop()
        assert serving is not None
        stop.append(lambda: loop.call_soon_threadsafe(serving.cancel))
        ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            await server.serve_forever()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)  # which ends every relay
    thread.start()
    ready.wait(10)
    try:
        yield f"http://127.0.0.1:{port[0]}"
    finally:
        stop[0]()
        thread.join(10)


def test_a_holder_killed_mid_turn_frees_the_agent_within_the_lease(
    replicas: list[ProxyProcess],
    redis_server: RedisServer,
    letta_url: str,
    letta: Letta,
    make_agent: Callable[[], AgentState],
    tmp_path: Path,
) -> None:
    """A process holding an agent's lock is SIGKILLed mid-turn: the next turn, on another process,
    proceeds within the lease (plus its own turn's time), where without the lease it would wait forever."""
    agent = make_agent()
    raw = redis.Redis.from_url(redis_server.url)
    with (
        slow_relay(letta_url) as relay,
        running_proxy(tmp_path, KEY, **settings(relay, redis_server.url)) as doomed,
    ):

        def doomed_turn() -> None:
            with contextlib.suppress(httpx.HTTPError):  # its process is killed under it
                chat(doomed, agent.name, "lost")

        threading.Thread(target=doomed_turn, daemon=True).start()
        deadline = time.monotonic() + 10
        while not raw.keys(f"*{agent.id}:queue"):
            assert time.monotonic() < deadline, "the doomed turn never took the lock"
            time.sleep(0.05)
        doomed.process.kill()
        doomed.process.wait(5)
        started = time.monotonic()
        reply = chat(replicas[0], agent.name, "next")
        took = time.monotonic() - started
    assert reply.status_code == 200, reply.text
    assert took < LEASE + 5, took
    assert [t for kind, t, _ in messages(letta, agent.id) if kind == "user_message"] == ["next"]


def test_redis_restarted_mid_run_gives_503s_or_progress_never_a_hang(
    replicas: list[ProxyProcess],
    redis_server: RedisServer,
    letta: Letta,
    make_agent: Callable[[], AgentState],
) -> None:
    """Turns keep coming while Redis restarts empty: each is answered (200) or refused clearly (503)
    within its bound, and the agent's history still never interleaves."""
    agent = make_agent()
    statuses: list[int] = []
    stop = threading.Event()

    def keep_sending(n: int) -> None:
        i = 0
        while not stop.is_set():
            reply = chat(replicas[n], agent.name, f"r{n}-{i}", timeout=LEASE + 30)
            statuses.append(reply.status_code)
            if reply.status_code == 503:
                assert reply.json()["error"]["code"] in ("lock_unavailable", "session_store_unavailable")
                time.sleep(0.2)
            i += 1

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(keep_sending, n) for n in range(3)]
        time.sleep(2)
        redis_server.start_again()
        time.sleep(LEASE + 3)
        stop.set()
        for future in futures:
            future.result(timeout=LEASE + 40)  # never a hang
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[-3:].count(200) >= 1  # progress after the restart
    history = [(kind, text) for kind, text, _ in messages(letta, agent.id)]
    assert_each_answer_follows_its_message(history)
