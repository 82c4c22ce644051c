"""proxy/letta/: what is sent to Letta, how its streams are opened and closed, and how its failures map."""

import asyncio
import json
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import aiohttp
import httpx
import letta_client
import pytest
import respx

from proxy.errors import ProxyError
from proxy.letta import Agent, Letta
from proxy.letta.errors import map_failure
from tests.conftest import AGENT, LETTA, agents_page, make_settings, sse
from tests.letta_captures import raw

BOT = Agent(AGENT["id"], AGENT["name"], 0)
TURN: list[Any] = [{"role": "user", "content": "hello"}]


def run(tmp_path: Path, scenario: Any, clock: Any = None, **settings: Any) -> Any:
    async def main() -> Any:
        letta = Letta(make_settings(tmp_path, **settings), clock)
        try:
            return await scenario(letta)
        finally:
            await letta.aclose()

    return asyncio.run(main())


def test_letta_credentials_and_project_are_sent(tmp_path: Path, letta: respx.MockRouter) -> None:
    """LETTA_API_KEY goes as a bearer token and LETTA_PROJECT as X-Project."""
    run(tmp_path, lambda client: client.agents(), letta_api_key="letta-secret", letta_project="proj-1")
    request = letta["agents"].calls[0].request
    assert request.headers["authorization"] == "Bearer letta-secret"
    assert request.headers["x-project"] == "proj-1"


RUN = "run-3f2ac17e-ba87-4e44-9a22-bf784dbdd8c1"  # the run of stream_tokens.sse


def test_a_stream_left_early_is_closed_its_run_cancelled_and_its_turn_ended(
    tmp_path: Path, letta: respx.MockRouter
) -> None:
    """A client gone right after the opening leaves no Letta response open and no run going."""
    letta["send"].mock(return_value=sse("stream_tokens.sse"))
    cancel = letta.post(f"/v1/agents/{AGENT['id']}/messages/cancel").mock(
        return_value=httpx.Response(200, json={})
    )
    closed: list[bool] = []

    async def open_and_drop(client: Letta) -> None:
        events = await client.stream(BOT, TURN, on_close=lambda: closed.append(True))
        await events.aclose()

    run(tmp_path, open_and_drop)
    assert letta["send"].calls.last.response.is_closed
    assert json.loads(cancel.calls.last.request.content) == {"run_ids": [RUN]}
    assert closed == [True]


def test_a_finished_stream_cancels_nothing(tmp_path: Path, letta: respx.MockRouter) -> None:
    """A run that reached its stop reason is not cancelled, and the turn is ended once."""
    letta["send"].mock(return_value=sse("stream_tokens.sse"))
    cancel = letta.post(f"/v1/agents/{AGENT['id']}/messages/cancel").mock(
        return_value=httpx.Response(200, json={})
    )
    closed: list[bool] = []

    async def read_all(client: Letta) -> None:
        async for _ in await client.stream(BOT, TURN, on_close=lambda: closed.append(True)):
            pass

    run(tmp_path, read_all)
    assert not cancel.called and closed == [True]


def test_a_stream_that_fails_to_open_still_ends_its_turn(tmp_path: Path, letta: respx.MockRouter) -> None:
    """The agent's queue moves on even when Letta refuses the stream."""
    letta["send"].mock(return_value=httpx.Response(500, json={"detail": "no"}))
    closed: list[bool] = []
    with pytest.raises(ProxyError):
        run(tmp_path, lambda client: client.stream(BOT, TURN, on_close=lambda: closed.append(True)))
    assert closed == [True]


def test_a_stream_yields_every_event_after_opening(tmp_path: Path, letta: respx.MockRouter) -> None:
    """All captured events arrive, in order, the first one included."""
    letta["send"].mock(return_value=sse("stream_tokens.sse"))

    async def read_all(client: Letta) -> list[str]:
        return [e.message_type async for e in await client.stream(BOT, TURN, on_close=lambda: None)]

    kinds = run(tmp_path, read_all)
    assert kinds == ["ping"] + ["assistant_message"] * 6 + ["stop_reason", "usage_statistics"]


def test_an_error_event_before_anything_else_fails_the_opening(
    tmp_path: Path, letta: respx.MockRouter
) -> None:
    """Letta's SSE `event: error` as the first thing is an HTTP error, raised before a 200 could go out."""
    body = b'event: error\ndata: {"detail": "agent is busy"}\n\n'
    letta["send"].mock(
        return_value=httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
    )
    with pytest.raises(ProxyError) as caught:
        run(tmp_path, lambda client: client.stream(BOT, TURN, on_close=lambda: None))
    assert caught.value.status == 502 and not caught.value.retry_safe


def test_a_malformed_event_mid_stream_is_anmap_failure(tmp_path: Path, letta: respx.MockRouter) -> None:
    """Garbage from Letta in the middle of a stream becomes a 502 error, not a crash."""
    body = raw("stream_tokens.sse").replace(b'"content":" me"}', b'"content":" me"', 1)
    letta["send"].mock(
        return_value=httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
    )

    async def read_all(client: Letta) -> None:
        async for _ in await client.stream(BOT, TURN, on_close=lambda: None):
            pass

    with pytest.raises(ProxyError) as caught:
        run(tmp_path, read_all)
    assert caught.value.status == 502


def test_agents_are_matched_by_name_or_id(tmp_path: Path, letta: respx.MockRouter) -> None:
    """The allowlist accepts ids as well as names."""
    other = {**AGENT, "id": "agent-other", "name": "other"}
    letta["agents"].mock(side_effect=lambda request: agents_page(request, [AGENT, other]))
    agents = run(tmp_path, lambda client: client.agents(), proxy_agents=f"{AGENT['id']}")
    assert [a.name for a in agents] == [AGENT["name"]]


def test_sending_a_turn_is_never_retried(tmp_path: Path, letta: respx.MockRouter) -> None:
    """A 5xx from Letta is not retried by the client: the turn might already be in the agent's memory."""
    letta["send"].mock(return_value=httpx.Response(503, json={"detail": "overloaded"}))
    with pytest.raises(ProxyError):
        run(tmp_path, lambda client: client.send(BOT, TURN))
    assert letta["send"].call_count == 1


def test_listing_agents_is_retried(tmp_path: Path, letta: respx.MockRouter) -> None:
    """Listing is harmless to repeat, so a passing Letta hiccup is retried."""
    page = httpx.Response(200, json=[AGENT])
    letta["agents"].mock(side_effect=[httpx.Response(503), page, httpx.Response(200, json=[])])
    agents = run(tmp_path, lambda client: client.agents())
    assert [a.id for a in agents] == [AGENT["id"]] and letta["agents"].call_count == 3


def test_an_agent_two_pages_both_list_is_listed_once(tmp_path: Path, letta: respx.MockRouter) -> None:
    """Agents made or deleted between two pages can shift one into both: it is one agent, not two that
    would make its name ambiguous."""
    other = {**AGENT, "id": "agent-00000000-0000-4000-8000-000000000002", "name": "other"}
    pages = [httpx.Response(200, json=[AGENT]), httpx.Response(200, json=[AGENT, other])]
    letta["agents"].mock(side_effect=[*pages, httpx.Response(200, json=[])])
    agents = run(tmp_path, lambda client: client.agents())
    assert [a.id for a in agents] == [AGENT["id"], other["id"]]


def test_the_letta_url_is_the_configured_one(tmp_path: Path, letta: respx.MockRouter) -> None:
    """Requests go to LETTA_BASE_URL."""
    run(tmp_path, lambda client: client.agents())
    assert str(letta["agents"].calls[0].request.url).startswith(LETTA)


def test_readiness_is_false_when_letta_is_down(tmp_path: Path, letta: respx.MockRouter) -> None:
    """An unreachable Letta makes the proxy not ready, without raising."""
    letta.get("/v1/health/").mock(side_effect=httpx.ConnectError("down"))
    assert run(tmp_path, lambda client: client.ready()) is False


async def settle() -> None:
    """Lets a background listing, already answered by the mock, finish."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_stale_agent_list_is_served_while_it_is_listed_again(
    tmp_path: Path, letta: respx.MockRouter
) -> None:
    """Within a second cache period nobody waits: the old list answers and one listing runs behind it."""
    other = {**AGENT, "id": "agent-other", "name": "other"}
    now = [1000.0]

    async def scenario(client: Letta) -> list[list[str]]:
        seen = [[a.name for a in await client.agents()]]
        letta["agents"].mock(side_effect=lambda request: agents_page(request, [AGENT, other]))
        now[0] += 3  # past one period (2 s), within two
        seen += [[a.name for a in await client.agents()] for _ in range(5)]
        await settle()
        seen.append([a.name for a in await client.agents()])
        return seen

    seen = run(tmp_path, scenario, lambda: now[0], proxy_agent_cache_seconds=2)
    assert seen[:6] == [[AGENT["name"]]] * 6
    assert seen[6] == [AGENT["name"], "other"]
    assert letta["agents"].call_count == 4  # two listings of two pages: five stale readers started one


def test_a_list_older_than_two_periods_is_listed_before_answering(
    tmp_path: Path, letta: respx.MockRouter
) -> None:
    other = {**AGENT, "id": "agent-other", "name": "other"}
    now = [1000.0]

    async def scenario(client: Letta) -> list[str]:
        await client.agents()
        letta["agents"].mock(side_effect=lambda request: agents_page(request, [AGENT, other]))
        now[0] += 2.5  # past two periods (1 s each)
        return [a.name for a in await client.agents()]

    assert run(tmp_path, scenario, lambda: now[0], proxy_agent_cache_seconds=1) == [AGENT["name"], "other"]


def test_a_failed_background_listing_keeps_the_list_and_is_logged(
    tmp_path: Path, letta: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]

    async def scenario(client: Letta) -> list[str]:
        await client.agents()
        letta["agents"].mock(return_value=httpx.Response(500))
        now[0] += 3  # past one period (2 s), within two
        return [a.name for a in await client.agents()]  # closing waits for the background listing

    assert run(tmp_path, scenario, lambda: now[0], proxy_agent_cache_seconds=2) == [AGENT["name"]]
    assert "could not list the agents again" in caplog.text


def caused(outer: Exception, *causes: BaseException) -> Exception:
    """`outer` raised from the chain of `causes`, innermost last, as the SDK and httpx-aiohttp chain them."""
    chain: list[BaseException] = [outer, *causes]
    for error, cause in zip(chain, chain[1:], strict=False):
        error.__cause__ = cause
    return outer


def test_a_refused_connection_is_a_503_whatever_httpx_aiohttp_calls_it() -> None:
    """httpx-aiohttp maps aiohttp's refused connection to httpx's ConnectTimeout: the root cause decides."""
    refused = aiohttp.ClientConnectorError(MagicMock(), OSError(111, "Connection refused"))
    error = map_failure(
        caused(letta_client.APITimeoutError(MagicMock()), httpx.ConnectTimeout("mapped"), refused),
        sent=True,
        secret=None,
    )
    assert (error.status, error.code, error.retry_safe) == (503, "upstream_unavailable", True)


@pytest.mark.parametrize(
    ("root", "sent", "status", "code", "retry_safe"),
    [
        (aiohttp.SocketTimeoutError("read"), True, 504, "upstream_timeout", False),
        (aiohttp.ServerDisconnectedError(), True, 502, "upstream_disconnected", False),
        (aiohttp.ServerDisconnectedError(), False, 503, "upstream_unavailable", True),
    ],
)
def test_transport_failures_map_by_their_root_cause(
    root: BaseException, sent: bool, status: int, code: str, retry_safe: bool
) -> None:
    error = map_failure(caused(httpx.ReadError("wrapped"), root), sent=sent, secret=None)
    assert (error.status, error.code, error.retry_safe) == (status, code, retry_safe)


def test_concurrent_readiness_probes_share_one_check(tmp_path: Path, letta: respx.MockRouter) -> None:
    """Twenty probes while Letta fails slowly: one health call, one answer for all."""

    async def slow_failure(_: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.1)
        return httpx.Response(500)

    health = letta.get("/v1/health/").mock(side_effect=slow_failure)

    async def probes(client: Letta) -> list[bool]:
        return await asyncio.gather(*(client.ready() for _ in range(20)))

    assert run(tmp_path, probes) == [False] * 20
    assert health.call_count == 1


def test_a_listing_longer_than_any_letta_holds_is_a_502(
    tmp_path: Path, letta: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages that advance for ever stop at MAX_LIST_PAGES."""
    monkeypatch.setattr("proxy.letta.agents.MAX_LIST_PAGES", 3)
    pages = iter(range(1000))
    letta["agents"].mock(
        side_effect=lambda _: httpx.Response(200, json=[{**AGENT, "id": f"agent-{next(pages)}"}])
    )
    with pytest.raises(ProxyError, match="more than 3 pages"):
        run(tmp_path, lambda client: client.agents())
    assert letta["agents"].call_count == 3


def status_error(status: int, body: object, **headers: str) -> letta_client.APIStatusError:
    response = httpx.Response(status, json=body, headers=headers, request=httpx.Request("POST", LETTA))
    return letta_client.APIStatusError("refused", response=response, body=body)


def test_letta_s_validation_errors_are_text_and_stay_out_of_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """FastAPI's 422 list reads as text for the client; the log has its status and no words of it."""
    detail = [{"type": "missing", "loc": ["body", "x"], "msg": "Field required", "input": "user words"}]
    error = map_failure(status_error(422, {"detail": detail}), sent=True, secret=None)
    assert error.message == "The Letta server answered 422: body.x: Field required"
    assert "422" in caplog.text and "Field required" not in caplog.text and "user words" not in caplog.text


def test_letta_s_retry_after_is_passed_on() -> None:
    """A Letta that is unavailable for a while says for how long; the client hears it."""
    refusal = status_error(503, {"detail": "later"}, **{"retry-after": "7"})
    error = map_failure(refusal, sent=False, secret=None)
    assert (error.status, error.headers) == (502, {"Retry-After": "7"})


def test_an_other_conflict_stays_letta_s_502() -> None:
    """Only Letta's busy and pending-approval conflicts are told apart; a unique-name clash is not busy."""
    error = map_failure(status_error(409, {"detail": "CONFLICT: name taken"}), sent=True, secret=None)
    assert (error.status, error.code) == (502, "upstream_error")


def _run(run_id: str, agent_id: str = AGENT["id"], conversation: str | None = None) -> dict[str, Any]:
    return {"id": run_id, "agent_id": agent_id, "conversation_id": conversation, "status": "running"}


@pytest.mark.parametrize(("conversation", "cancelled"), [(None, ["run-default"]), ("conv-1", ["run-conv-1"])])
def test_cancelling_the_active_run_of_one_history_leaves_the_others(
    tmp_path: Path, letta: respx.MockRouter, conversation: str | None, cancelled: list[str]
) -> None:
    """For a turn whose run id is unknown: only the active runs of its own history are cancelled."""
    active = [_run("run-default"), _run("run-conv-1", conversation="conv-1"), _run("run-other", "agent-x")]
    listed = letta.get("/v1/runs/").mock(return_value=httpx.Response(200, json=active))
    cancel = letta.post(f"/v1/agents/{AGENT['id']}/messages/cancel").mock(
        return_value=httpx.Response(200, json={})
    )
    run(tmp_path, lambda client: client.cancel_active(BOT, conversation))
    params = listed.calls[0].request.url.params
    assert params["agent_id"] == AGENT["id"] and params.get_list("statuses") == ["created", "running"]
    assert json.loads(cancel.calls.last.request.content) == {"run_ids": cancelled}


def test_no_active_run_means_no_cancel_and_a_failing_letta_raises_nothing(
    tmp_path: Path, letta: respx.MockRouter
) -> None:
    """A run that already ended is left alone; a cancel that fails is logged, never raised to the caller."""
    letta.get("/v1/runs/").mock(side_effect=[httpx.Response(200, json=[]), httpx.Response(500, json={})])
    cancel = letta.post(f"/v1/agents/{AGENT['id']}/messages/cancel")
    run(tmp_path, lambda client: client.cancel_active(BOT, None))
    run(tmp_path, lambda client: client.cancel_active(BOT, None))
    assert not cancel.called


def test_a_turn_to_a_deleted_agent_is_a_404_and_the_next_request_lists_again(
    tmp_path: Path, letta: respx.MockRouter
) -> None:
    """Letta's 404 on a turn means the agent is gone: the cached list, which still has it, is dropped."""
    letta["send"].mock(return_value=httpx.Response(404, json={"detail": "Agent not found"}))

    async def scenario(client: Letta) -> tuple[ProxyError, int, int]:
        await client.agents()
        listed = letta["agents"].call_count
        with pytest.raises(ProxyError) as refused:
            await client.send(BOT, TURN)
        await client.agents()
        return refused.value, listed, letta["agents"].call_count

    error, before, after = run(tmp_path, scenario, proxy_agent_cache_seconds=600)
    assert (error.status, error.code, error.param) == (404, "model_not_found", "model")
    assert after > before
