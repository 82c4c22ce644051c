"""At PROXY_LOG_LEVEL=debug (and letta-client's own LETTA_LOG=debug), message text still never reaches
the log: the HTTP clients that would log whole request bodies are pinned at warning."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import KEY
from tests.fault_letta import FaultLetta
from tests.proxy_process import running_proxy

pytestmark = pytest.mark.slow
MARKER = "zebra-marker-7f3a"


@pytest.fixture(scope="module")
def fault() -> Iterator[FaultLetta]:
    server = FaultLetta().start()
    yield server
    server.stop()


def test_message_text_never_reaches_the_log_at_debug_level(fault: FaultLetta, tmp_path: Path) -> None:
    """A whole turn and a stream carrying a marker in their text and sender: no log line has it. (Without
    the pins, letta-client logs its request options, the whole JSON body, at debug level.)"""
    body = {"model": "ok", "user": f"user-{MARKER}", "messages": [{"role": "user", "content": MARKER}]}
    with running_proxy(
        tmp_path, KEY, LETTA_BASE_URL=fault.url, PROXY_LOG_LEVEL="debug", LETTA_LOG="debug"
    ) as proxy:
        headers = {"X-Api-Key": KEY}
        whole = httpx.post(f"{proxy.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
        streamed = httpx.post(
            f"{proxy.url}/v1/chat/completions", json={**body, "stream": True}, headers=headers, timeout=30
        )
        output = proxy.output()
    assert whole.status_code == streamed.status_code == 200
    assert [line for line in output.splitlines() if MARKER in line] == []
