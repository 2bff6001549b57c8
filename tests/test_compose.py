"""docker-compose.yml, validated without a Docker engine: parsed, then every process it describes is
started as it would run in its container (same commands, same environment; container names mapped to
loopback, /data to a temporary folder). A data load runs through the core actors and the ib host
actor against the sim gateway, then a training runs on the host trainer (python -m hosts.training)."""

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
    # The data store is shared between the job-manager (writes bars) and the trainer (reads them).
    assert SERVICES["core"]["volumes"] == SERVICES["trainer"]["volumes"] == ["ktrdr-data:/data"]


class _Compose:
    """The compose services as local processes."""

    def __init__(self, tmp: Path, nats_url: str) -> None:
        self.tmp, self.nats_url = tmp, nats_url
        self.data = tmp / "data"
        self.gw_port = free_port()
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def _translate(self, value: str) -> str:
        return {"nats://nats:4222": self.nats_url, "/data": str(self.data), "sim-gateway": "127.0.0.1",
                "4002": str(self.gw_port)}.get(value, value)

    def start(self, name: str) -> subprocess.Popen[str]:
        svc = SERVICES[name]
        env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "IB_PORT", "IB_HOST", "KTRDR_HOME")}
        env.update({k: self._translate(str(v)) for k, v in svc.get("environment", {}).items()})
        env["KTRDR_HOME"] = env.get("KTRDR_HOME", str(self.tmp / f"{name}-home"))
        cmd = [sys.executable if c == "python" else self._translate(c) for c in svc["command"]]
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
    for name in ("sim-gateway", "core", "ib", "trainer"):
        compose.start(name)
    settings = make_settings(compose.data, compose.nats_url)
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
        assert Path(view.result["artifacts"]["model_path"]).is_relative_to(compose.data / "models")

    codes = compose.stop_all()  # SIGTERM, as `docker compose down` sends
    assert codes == {"sim-gateway": 0, "core": 0, "ib": 0, "trainer": 0}, codes
