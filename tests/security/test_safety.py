"""Operator safety (issue 18, F12, F13, F15), on a real embedded stack with auth on (`ktrdr up`: its
nats-server with every role's NKEY, the orchestrator and the dummy as processes, the page), driven
through the CLI as a user runs it:

- F12: `ktrdr auth init --force` on a running stack refuses in one line and the stack still serves; a
  command whose key the server does not know says so in one line (exit 1), `ktrdr up` included.
- F13: a client whose clock is a day behind or ahead (libfaketime, the real clock of the process)
  gets the deadline the orchestrator's clock implies; a TLS client whose clock is before the
  certificates' allowed skew gets one clear line, not a hang.
- F15: the page serves no cancel token; a cancel without the login cookie is refused; the way in is
  a one-time code that `ktrdr web` prints; one client cannot take every live-stream slot; every log
  and run file of the stack is 0600 in a 0700 directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ktrdr import auth
from ktrdr.embedded import free_port
from tests.helpers import run_ktrdr
from tests.security.conftest import Server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
needs_faketime = pytest.mark.skipif(not FAKETIME_LIB.exists(),
                                    reason="libfaketime is not installed (apt-get install faketime; .ci/run does)")


def run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_ktrdr(env, *args, timeout=timeout)


def skewed(env: dict[str, str], offset: str) -> dict[str, str]:
    """The environment of a process whose wall clock is `offset` off (libfaketime: "-1d", "+1d"); its
    monotonic clock stays true, as on a machine whose clock is merely set wrong."""
    return {**env, "LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_DONT_RESET": "1"}


def one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{text[-3000:]}"
    assert "Traceback" not in text
    return lines[0]


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One embedded stack for the module (orchestrator + dummy); no test leaves it changed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "IB_PORT", "KTRDR_"))}
    env.update({"KTRDR_HOME": str(tmp_path_factory.mktemp("safety") / "ktrdr"), "KTRDR_NATS_PORT": str(free_port()),
                "KTRDR_WEB_PORT": str(free_port()), "KTRDR_LOCAL_ROLES": "orchestrator,dummy"})
    res = run(env, "up")
    assert res.returncode == 0, res.stderr
    yield env
    run(env, "down")


def home(env: dict[str, str]) -> Path:
    return Path(env["KTRDR_HOME"])


# ------------------------------------------------------------------------------------------ F12
def test_auth_init_force_on_a_running_stack_refuses_in_one_line_and_the_stack_serves(stack_env):
    seeds = {p.name: p.read_text() for p in (home(stack_env) / "auth").glob("*.nk")}
    res = run(stack_env, "auth", "init", "--force")
    assert res.returncode == 2, (res.stdout, res.stderr)
    line = one_line(res.stderr)
    assert "running" in line and "ktrdr down" in line, line
    assert {p.name: p.read_text() for p in (home(stack_env) / "auth").glob("*.nk")} == seeds  # nothing rotated
    ok = run(stack_env, "dummy", "--iterations", "1", "--interval", "0.01")
    assert ok.returncode == 0, ok.stderr


def test_a_key_the_server_does_not_know_is_one_line_with_exit_1(stack_env):
    """What F12 left behind (the keys on disk are not the ones the server knows): every command, `ktrdr
    up` included, says the server refused the credentials, in one line."""
    seed = home(stack_env) / "auth" / "cli.nk"
    kept = seed.read_text()
    try:
        seed.write_text(auth._new_seed().decode() + "\n")
        for args in (("ops", "list"), ("up",)):
            res = run(stack_env, *args, timeout=60)
            assert res.returncode == 1, (args, res.stdout, res.stderr[-3000:])
            line = one_line(res.stderr)
            assert "authorization violation" in line.lower() and "credentials" in line, line
            assert "is the server running" not in line
    finally:
        seed.write_text(kept)
    assert run(stack_env, "ops", "list").returncode == 0


# ------------------------------------------------------------------------------------------ F13
def _ran(env: dict[str, str], *args: str) -> dict[str, Any]:
    res = run(env, "dummy", *args, "--json", timeout=90)
    assert res.stdout.strip(), res.stderr
    view: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    view["_rc"] = res.returncode
    return view


def _allowed(view: dict[str, Any]) -> float:
    """The deadline's distance from the creation, both on the orchestrator's clock (its `created`)."""
    return (datetime.fromisoformat(view["deadline"]) - datetime.fromisoformat(view["created_at"])).total_seconds()


@needs_faketime
def test_a_client_a_day_behind_gets_the_deadline_of_the_orchestrators_clock(stack_env):
    env = skewed(stack_env, "-1d")
    view = _ran(env, "--iterations", "5", "--interval", "0.4", "--timeout", "60")
    assert view["status"] == "completed" and view["_rc"] == 0, view  # main: cancelled at once (-86340 s)
    assert abs(_allowed(view) - 60) < 1, view
    assert abs((datetime.fromisoformat(view["deadline"]) - datetime.now().astimezone()).total_seconds() - 60) < 60


@needs_faketime
def test_a_client_a_day_ahead_is_cancelled_when_its_timeout_passes(stack_env):
    env = skewed(stack_env, "+1d")
    view = _ran(env, "--iterations", "100", "--interval", "0.2", "--timeout", "2")
    assert view["status"] == "cancelled" and view["reason_code"] == "deadline", view  # main: ran its 20 s
    assert view["_rc"] == 1 and "deadline of 2 s passed" in (view["reason"] or "")
    assert abs(_allowed(view) - 2) < 1, view


@needs_faketime
def test_a_tls_client_outside_the_allowed_clock_skew_gets_one_clear_line(tls_nats: Server, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "KTRDR_"))}
    env.update({"KTRDR_HOME": str(tmp_path / "client"), "NATS_URL": f"tls://localhost:{tls_nats.port}",
                "NATS_NKEY": str(tls_nats.files.seeds["cli"]), "NATS_TLS_CA": str(tls_nats.files.tls.ca_file)})
    assert run(skewed(env, "-1d"), "status", timeout=60).returncode == 0  # within the allowed skew
    started = time.monotonic()
    res = run(skewed(env, f"-{auth.CERT_CLOCK_SKEW.days + 1}d"), "status", timeout=60)
    assert res.returncode == 1, (res.stdout, res.stderr[-3000:])
    line = one_line(res.stderr)
    assert "TLS" in line and "clock" in line and "not yet valid" in line, line
    assert time.monotonic() - started < 60


# ------------------------------------------------------------------------------------------ F15
def _web_url(env: dict[str, str]) -> str:
    return (home(env) / "run" / "web.url").read_text().strip()


async def _login(http: aiohttp.ClientSession, env: dict[str, str]) -> str:
    res = await asyncio.to_thread(run, env, "web")
    assert res.returncode == 0, res.stderr
    url = res.stdout.strip()
    assert url.startswith(_web_url(env) + "login?code="), url
    async with http.get(url, allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/"
        cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie, cookie
    return url


async def _start_dummy(env: dict[str, str]) -> str:
    res = await asyncio.to_thread(run, env, "dummy", "--iterations", "300", "--interval", "0.2", "--no-wait",
                                  "--json")
    assert res.returncode == 0, res.stderr
    return str(json.loads(res.stdout)["op_id"])


async def test_the_page_serves_no_token_and_a_cancel_without_the_login_cookie_is_refused(stack_env):
    base = _web_url(stack_env)
    origin = base.rstrip("/")
    op_id = await _start_dummy(stack_env)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as anon:
        async with anon.get(base) as r:
            page = await r.text()
        assert "Set-Cookie" not in r.headers
        token = re.search(r'name="ktrdr-token" content="([^"]*)"', page)
        assert token is None, "the page carries a token anyone who can open a socket reads"
        headers = {"Origin": origin, "X-KTRDR-Token": "x", "X-KTRDR-Cancel": "1"}
        async with anon.post(f"{base}ops/{op_id}/cancel", headers=headers) as r:
            assert r.status == 403 and "ktrdr web" in (await r.json())["note"]
        async with anon.post(f"{base}ops/{op_id}/cancel", headers={**headers, "Cookie": "ktrdr_session=forged"}) as r:
            assert r.status == 403
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as user:
        code_url = await _login(user, stack_env)
        async with user.post(f"{base}ops/{op_id}/cancel", headers={"Origin": origin, "X-KTRDR-Cancel": "1"}) as r:
            assert r.status == 202 and (await r.json())["ok"] is True
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as again:
        async with again.get(code_url, allow_redirects=False) as r:  # a code opens the page once
            assert r.status == 403 and "Set-Cookie" not in r.headers
    watched = await asyncio.to_thread(run, stack_env, "ops", "watch", op_id, "--json", timeout=60)
    assert watched.returncode == 130, watched.stderr  # cancelled, by the logged-in page alone


async def test_one_client_cannot_take_every_live_stream_slot(stack_env):
    from ktrdr.web import MAX_STREAMS_PER_CLIENT

    base = _web_url(stack_env)
    opened: list[aiohttp.ClientResponse] = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as anon, \
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as user:
        try:
            for _ in range(MAX_STREAMS_PER_CLIENT):
                r = await anon.get(f"{base}events")
                opened.append(r)
                assert r.status == 200
            refused = await anon.get(f"{base}events")
            assert refused.status == 429, refused.status  # main: 200 (one client could take all 64)
            refused.release()
            await _login(user, stack_env)
            async with user.get(f"{base}events") as mine:
                assert mine.status == 200
        finally:
            for r in opened:
                r.close()


def test_every_log_and_run_file_of_the_stack_is_0600_in_0700_directories(stack_env):
    seen = []
    for sub in ("logs", "run"):
        d = home(stack_env) / sub
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, (d, oct(d.stat().st_mode))
        for p in d.iterdir():
            if p.is_file():
                seen.append(p.name)
                assert stat.S_IMODE(p.stat().st_mode) == 0o600, (p, oct(p.stat().st_mode))
    assert {"nats.log", "actors.log", "web.log", "nats.pid", "nats.url", "web.url"} <= set(seen), seen


def test_the_log_files_stay_0600_after_a_restart_over_old_0644_ones(tmp_path):
    """An older version left 0644 logs: the next `up` tightens them (appending keeps a file's mode)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "IB_PORT", "KTRDR_"))}
    env.update({"KTRDR_HOME": str(tmp_path / "ktrdr"), "KTRDR_NATS_PORT": str(free_port()),
                "KTRDR_WEB_PORT": str(free_port()), "KTRDR_LOCAL_ROLES": "orchestrator"})
    logs = tmp_path / "ktrdr" / "logs"
    logs.mkdir(parents=True, mode=0o755)
    os.chmod(logs, 0o755)
    for name in ("nats.log", "actors.log"):
        (logs / name).write_text("old\n")
        os.chmod(logs / name, 0o644)
    try:
        assert run(env, "up").returncode == 0
        assert stat.S_IMODE(logs.stat().st_mode) == 0o700
        for name in ("nats.log", "actors.log"):
            assert stat.S_IMODE((logs / name).stat().st_mode) == 0o600, name
    finally:
        run(env, "down")

