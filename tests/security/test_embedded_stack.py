"""The embedded stack runs with auth on, invisible to a local user: `ktrdr up` creates the per-role
credentials, every actor and the CLI use their role's, an anonymous client is refused, a role cannot
step outside its lists, and beyond loopback the server speaks TLS that clients verify."""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
from pathlib import Path

import nats
import pytest

from ktrdr import auth
from ktrdr.embedded import free_port
from tests.helpers import run_ktrdr

pytestmark = pytest.mark.slow


def run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_ktrdr(env, *args, timeout=timeout)


@pytest.fixture
def stack_env(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "IB_PORT", "KTRDR_"))}
    env.update({"KTRDR_HOME": str(tmp_path / "ktrdr"), "KTRDR_NATS_PORT": str(free_port()),
                "KTRDR_WEB_PORT": str(free_port()), "KTRDR_LOCAL_ROLES": "orchestrator,dummy"})
    yield env
    run(env, "down")


async def _refused(url: str, **opts: object) -> str:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    try:
        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3,
                                error_cb=on_error, **opts)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc} {errors}"
    await nc.close()
    raise AssertionError(f"{url} accepted a client with {list(opts)}")


async def test_auth_is_on_and_invisible_to_a_local_user(stack_env):
    res = run(stack_env, "dummy", "--iterations", "2", "--interval", "0.01")  # starts the stack on demand
    assert res.returncode == 0, res.stderr
    home = Path(stack_env["KTRDR_HOME"])
    adir = home / "auth"
    assert stat.S_IMODE(adir.stat().st_mode) == 0o700
    assert {p.name for p in adir.glob("*.nk")} == {f"{r}.nk" for r in auth.ROLES}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in adir.iterdir() if p.is_file())
    url = (home / "run" / "nats.url").read_text().strip()
    assert "authorization" in (await _refused(url)).lower()
    # A role cannot step outside its lists: the trainer's credentials cannot submit a command.
    violations: list[str] = []

    async def on_error(exc: Exception) -> None:
        violations.append(str(exc))

    nc = await nats.connect(url, error_cb=on_error, **auth.connect_options("trainer", auth_dir=adir))
    try:
        await nc.publish("cmd.dummy.run", b"{}")
        await nc.flush()
        for _ in range(50):
            if violations:
                break
            await nc.flush()
    finally:
        await nc.close()
    assert any("permissions violation" in v.lower() for v in violations), violations
    lines = run(stack_env, "auth", "env", "trainer").stdout
    assert "export NATS_NKEY=" in lines and "export KTRDR_ROLE=trainer" in lines and "NATS_URL=" in lines


async def test_beyond_loopback_the_server_speaks_tls_that_clients_verify(stack_env):
    res = run(stack_env, "up", "--listen", "127.0.0.2")  # a loopback address, but not "localhost": TLS on
    assert res.returncode == 0, res.stderr
    home = Path(stack_env["KTRDR_HOME"])
    url = (home / "run" / "nats.url").read_text().strip()
    assert url.startswith("tls://127.0.0.2:")
    done = run(stack_env, "dummy", "--iterations", "2", "--interval", "0.01")
    assert done.returncode == 0, done.stderr  # the CLI verified the server against our CA
    opts = auth.connect_options("cli", auth_dir=home / "auth")
    # Right credentials, but a client that trusts the system CAs only: the certificate is refused.
    assert "CERTIFICATE" in (await _refused(url, **{**opts, "tls": ssl.create_default_context()})).upper()
    status = json.loads(run(stack_env, "status", "--json").stdout)
    assert status["servers"][0]["url"] == url
