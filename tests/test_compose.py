"""docker-compose.yml, validated without a Docker engine: parsed, then every process it describes is
started as it would run in its container (same commands, same environment; container names mapped to
loopback, each named volume to a temporary folder of its own). A data load runs through the core actors
and the ib host actor against the sim gateway, then a training runs on the host trainer (python -m
hosts.training), whose home starts empty and shares nothing with the core's: the bars reach it through
BARS and the model goes to MODELS, where the client lists it."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from events import subjects
from events.messages import LoadData, StartTraining
from ktrdr.client import Client
from ktrdr.embedded import free_port
from ktrdr.transport import ModelStore
from tests.conftest import NatsServer, make_settings
from tests.helpers import wait_terminal

ROOT = Path(__file__).parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
STRATEGY = ROOT / "strategies" / "mlp_rsi_aapl.yaml"


def test_compose_file_describes_the_stack_with_this_repos_nats_conf_and_runnable_modules():
    assert set(SERVICES) == {"nats", "core", "sim-gateway", "ib", "trainer"}
    nats = SERVICES["nats"]
    assert "./nats.conf:/etc/nats/nats.conf:ro" in nats["volumes"]
    assert nats["command"] == ["-c", "/etc/nats/nats.conf"]
    # nats.conf reads exactly these variables; the embedded stack sets the same ones.
    conf = (ROOT / "nats.conf").read_text()
    for var in nats["environment"]:
        assert f"${var}" in conf, var
    for name, svc in SERVICES.items():
        if name == "nats":
            continue
        assert svc["build"] == "."
        cmd = svc["command"]
        assert cmd[:2] == ["python", "-m"], cmd
        assert importlib.util.find_spec(cmd[2]) is not None, f"{name}: no module {cmd[2]}"
        if "NATS_URL" in svc.get("environment", {}):
            assert svc["environment"]["NATS_URL"] == "nats://nats:4222" and "nats" in svc["depends_on"]
    # No volume is shared between containers: bars, models and checkpoints travel through NATS; each
    # actor's /data is its own cache.
    mounts = [(name, v.split(":")[0]) for name, svc in SERVICES.items() for v in svc.get("volumes", [])
              if not v.startswith("./")]
    owners = {vol: [n for n, v in mounts if v == vol] for _, vol in mounts}
    assert all(len(names) == 1 for names in owners.values()), owners
    assert SERVICES["core"]["volumes"] == ["core-cache:/data"]
    assert SERVICES["trainer"]["volumes"] == ["trainer-cache:/data"]
    assert set(COMPOSE["volumes"]) == {"nats-data", "core-cache", "trainer-cache"}


class _Compose:
    """The compose services as local processes."""

    def __init__(self, tmp: Path, nats_url: str) -> None:
        self.tmp, self.nats_url = tmp, nats_url
        self.gw_port = free_port()
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def volume(self, name: str) -> Path:
        """Where a named volume lives here (created empty, as docker creates it)."""
        path = self.tmp / "volumes" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def data_of(self, service: str) -> Path | None:
        """The folder a service's /data is mounted from (None: the container's own, here a fresh one)."""
        for v in SERVICES[service].get("volumes", []):
            source, _, target = v.partition(":")
            if target == "/data":
                return self.volume(source)
        return None

    def _translate(self, value: str, data: Path) -> str:
        return {"nats://nats:4222": self.nats_url, "/data": str(data), "sim-gateway": "127.0.0.1",
                "4002": str(self.gw_port)}.get(value, value)

    def start(self, name: str) -> subprocess.Popen[str]:
        svc = SERVICES[name]
        data = self.data_of(name) or self.volume(f"{name}-container")
        env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "IB_PORT", "IB_HOST", "KTRDR_HOME")}
        env.update({k: self._translate(str(v), data) for k, v in svc.get("environment", {}).items()})
        env["KTRDR_HOME"] = env.get("KTRDR_HOME", str(self.tmp / f"{name}-home"))
        cmd = [sys.executable if c == "python" else self._translate(c, data) for c in svc["command"]]
        with open(self.tmp / f"{name}.log", "w") as log:  # the child keeps its own copy of the fd
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def stop_all(self) -> dict[str, int | None]:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, p in self.procs.items():
            try:
                codes[name] = p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                codes[name] = None
        return codes


@pytest.fixture
def compose(tmp_path: Path, nats_server: NatsServer) -> Iterator[_Compose]:
    c = _Compose(tmp_path, nats_server.url)
    yield c
    c.stop_all()


async def _live_roles(client: Client) -> set[str]:
    return {hb.role for hb in await client.live_actors()}


@pytest.mark.slow
async def test_compose_services_run_a_data_load_and_a_host_training(compose: _Compose):
    trainer_home = compose.data_of("trainer")
    assert trainer_home is not None and trainer_home != compose.data_of("core")
    assert list(trainer_home.iterdir()) == []  # the trainer starts with an empty home
    for name in ("sim-gateway", "core", "ib", "trainer"):
        compose.start(name)
    settings = make_settings(compose.tmp / "client-home", compose.nats_url)
    async with Client(settings) as client:
        await client.ensure_streams()
        want = {"orchestrator", "dummy", "job-manager", "ib", "trainer"}
        roles: set[str] = set()

        async def all_up() -> bool:
            nonlocal roles
            roles = await _live_roles(client)
            dead = [n for n, p in compose.procs.items() if p.poll() is not None]
            assert not dead, f"{dead} exited: {[compose.log(n)[-2000:] for n in dead]}"
            return want <= roles

        deadline = asyncio.get_running_loop().time() + 60
        while not await all_up():
            assert asyncio.get_running_loop().time() < deadline, f"live roles {roles}, want {want}"
            await asyncio.sleep(0.1)  # poll interval of the presence check above

        start, end = datetime(2023, 1, 2, tzinfo=UTC), datetime(2023, 7, 3, tzinfo=UTC)
        load = LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", timeframe="1h", mode="full",
                        start=start, end=end)
        await client.submit(load)
        view = await wait_terminal(client, load.op_id, timeout=90)
        assert view.status == "completed", (view.error, compose.log("ib")[-2000:])
        assert view.result["bars_added"] > 800 and view.result["segments_failed"] == 0

        train = StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                              strategy_yaml=STRATEGY.read_text(), start=start, end=end, epochs=2)
        await client.submit(train)
        view = await wait_terminal(client, train.op_id, timeout=120)
        assert view.status == "completed", (view.error, compose.log("trainer")[-2000:])
        usage = view.result["resource_usage"]
        assert usage["training_mode"] == "host" and usage["device"] == "cpu"
        assert view.result["data_summary"]["simulated"] is True
        # The bars reached the trainer through BARS (its home holds only their cached copy) and the model
        # is in MODELS, where any client lists it.
        assert [m["name"] for m in await ModelStore(client.js).list()] == [view.result["artifacts"]["name"]]
        cached = sorted(str(p.relative_to(trainer_home)) for p in trainer_home.rglob("*") if p.is_file())
        assert len(cached) == 1 and cached[0].startswith("cache/") and cached[0].endswith(".parquet"), cached

    codes = compose.stop_all()  # SIGTERM, as `docker compose down` sends
    assert codes == {"sim-gateway": 0, "core": 0, "ib": 0, "trainer": 0}, codes
