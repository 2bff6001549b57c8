"""Fixtures for the operations page: the server as its own process (`python -m ktrdr.web`, the argv the
stack runs) against the test's nats-server, a reader for its server-sent events, and headless
Chromium driven by selenium (skipped with the reason when Chromium, chromedriver or selenium is
missing here; CI installs them)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ktrdr.config import Settings
from ktrdr.web import READY_PREFIX, spawn_argv

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).parents[2] / "docs" / "screenshots"


@dataclass
class WebServer:
    url: str
    proc: asyncio.subprocess.Process
    settings: Settings

    def at(self, path: str) -> str:
        return self.url.rstrip("/") + path

    def login_url(self) -> str:
        """A one-time login link, made as `ktrdr web` makes it: from the secret the server wrote."""
        from ktrdr.web import LOGIN_PATH, make_login_code, read_secret

        secret = read_secret(self.settings)
        assert secret is not None, "the server keeps its secret in run/web.secret (0600)"
        return self.at(f"{LOGIN_PATH}?code={make_login_code(secret)}")


@pytest.fixture
async def start_web(settings: Settings) -> AsyncIterator[Callable[..., Awaitable[WebServer]]]:
    """start_web(*extra_args) -> a running `python -m ktrdr.web --port 0` (stopped at teardown)."""
    procs: list[asyncio.subprocess.Process] = []

    async def start(*extra: str) -> WebServer:
        env = {**os.environ, "NATS_URL": settings.nats_url or "", "KTRDR_HOME": str(settings.home),
               "PYTHONUNBUFFERED": "1"}
        # stderr to a file: a pipe nobody reads would fill up with reconnect warnings and block the server.
        log = settings.home.parent / f"web-{len(procs)}.log"
        with open(log, "wb") as err_file:
            proc = await asyncio.create_subprocess_exec(*spawn_argv("127.0.0.1", 0), *extra, env=env,
                                                        stdout=asyncio.subprocess.PIPE, stderr=err_file)
        procs.append(proc)
        assert proc.stdout is not None
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            if not line:
                raise RuntimeError(f"ktrdr.web exited before serving: {log.read_text()}")
            if line.startswith(READY_PREFIX):
                return WebServer(line[len(READY_PREFIX):].strip(), proc, settings)

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@pytest.fixture
async def web(start_web: Callable[..., Awaitable[WebServer]]) -> WebServer:
    return await start_web()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe=True: keep cookies for an IP host (127.0.0.1), as a browser does
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def read_sse(resp: aiohttp.ClientResponse) -> tuple[str, dict[str, Any]]:
    """The next event (name, JSON data) of a server-sent-event response; comments are skipped."""
    name, data = "message", ""
    while True:
        raw = await asyncio.wait_for(resp.content.readline(), 30)
        if not raw:
            raise EOFError("the event stream ended")
        line = raw.decode().rstrip("\n")
        if line == "":
            if data:
                return name, json.loads(data)
            name = "message"
            continue
        if line.startswith(":") or line.startswith("retry:"):
            continue
        field, _, value = line.partition(": ")
        if field == "event":
            name = value
        elif field == "data":
            data += value


async def log_in(http: aiohttp.ClientSession, web: WebServer) -> None:
    """Open the page through a one-time login link: the session's cookie may cancel from then on."""
    async with http.get(web.login_url(), allow_redirects=False) as resp:
        assert resp.status == 303, await resp.text()
    async with http.get(web.at("/")) as resp:
        assert 'name="ktrdr-can-cancel" content="1"' in await resp.text()


@pytest.fixture
async def bars_in_store(client: Any) -> None:
    """A year and a bit of AAPL 1h bars with a learnable cycle in BARS (where trainers read), for a tiny
    training."""
    from ktrdr.data.bars_store import BarStore
    from tests.training.conftest import make_bars

    await BarStore(client.js).merge("AAPL", "1h", make_bars(3000, seed=1), "sim")


# ------------------------------------------------------------------------------------------ browser
def _browser_missing() -> str | None:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        return "headless Chromium is not installed here (apt-get install chromium chromium-driver; .ci/run does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    # An explicit chromedriver path: selenium-manager is never asked to find (or download) one.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        with contextlib.suppress(Exception):
            driver.quit()


def save_screenshot(driver: Any, name: str, tmp_path: Path) -> Path:
    """Always into the test's tmp dir; into docs/screenshots too when KTRDR_SCREENSHOTS=1."""
    out = tmp_path / name
    driver.save_screenshot(str(out))
    if os.environ.get("KTRDR_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, SCREENSHOTS / name)
    return out
