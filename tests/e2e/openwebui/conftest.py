"""Fixtures of the Open WebUI suite: two fresh agents, the proxy, Open WebUI in front of it, and a browser.

It needs what `uv run python -m tests.e2e.openwebui.openwebui` installs (Open WebUI, pinned, and Debian's
Chromium); without it the suite is skipped, saying so, or fails under PROXY_E2E_REQUIRED=1 (CI).
"""

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from letta_client.types import AgentState
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.conftest import API_KEY
from tests.e2e.openwebui.openwebui import CHROMIUM, missing, running_openwebui
from tests.proxy_process import running_proxy
from tests.required import unavailable

METRICS_KEY = "sk-openwebui-metrics-" + uuid.uuid4().hex

SHOTS = pytest.StashKey[Path]()
FAILED = pytest.StashKey[bool]()
WAIT_MS = 60_000  # for an element or an answer: two busy cores run Letta, the proxy, Open WebUI and Chromium

expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def openwebui_installed() -> None:
    """Skips (or fails, if required) when Open WebUI or Chromium is absent."""
    if reason := missing():
        unavailable(reason)


@pytest.fixture(scope="module")
def agents(openwebui_installed: None, make_agent: Callable[[], AgentState]) -> tuple[AgentState, AgentState]:
    """Two fresh agents: Open WebUI preselects one, the test picks the other."""
    return make_agent(), make_agent()


@pytest.fixture(scope="module")
def webui_proxy(
    letta_url: str, agents: tuple[AgentState, AgentState], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The proxy as a real process, with defaults but a key that sees only this suite's agents (and an
    unscoped one for /metrics, which scoped keys may not read)."""
    scoped = f"{API_KEY}:{'|'.join(agent.name for agent in agents)}"
    try:
        with running_proxy(
            tmp_path_factory.mktemp("webui-proxy"),
            f"{scoped},{METRICS_KEY}",
            LETTA_BASE_URL=letta_url,
            PROXY_AGENT_CACHE_SECONDS="0",
        ) as proxy:
            yield proxy.url
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="module")
def openwebui(webui_proxy: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Open WebUI's base URL, its data in a fresh temporary directory, the proxy as its connection."""
    try:
        with running_openwebui(
            tmp_path_factory.mktemp("openwebui") / "data", f"{webui_proxy}/v1", API_KEY
        ) as url:
            yield url
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="module")
def browser(openwebui_installed: None) -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright (whose own browser download cannot work here)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser: Browser, openwebui: str) -> Iterator[Page]:
    """One tab on Open WebUI, signed in (no login), the release notes of a first visit closed."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(WAIT_MS)
    page.goto(openwebui, wait_until="load")
    notes = page.get_by_role("button", name="Okay, Let's Go!")
    notes.or_(page.locator("#model-selector-model-button")).first.wait_for()
    if notes.is_visible():
        notes.click()
    yield page
    page.close()


@pytest.fixture(scope="module")
def shots(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go; the path is printed at the end of the run."""
    directory = tmp_path_factory.mktemp("openwebui-screenshots")
    request.config.stash[SHOTS] = directory
    return directory


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if (directory := config.stash.get(SHOTS, None)) is not None and any(directory.iterdir()):
        terminalreporter.write_line(f"Open WebUI screenshots: {directory}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[FAILED] = True
    return report


@pytest.fixture(autouse=True)
def shot_on_failure(request: pytest.FixtureRequest, shots: Path) -> Iterator[None]:
    """A failed test leaves a screenshot of the page as it was, beside the steps' own."""
    yield
    if request.node.stash.get(FAILED, False) and "page" in request.fixturenames:
        page: Page = request.getfixturevalue("page")
        page.screenshot(path=shots / f"failed-{request.node.name}.png")
