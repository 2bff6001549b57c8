"""docker-compose.yml, validated without a Docker engine: parsed, then every process it describes is
started as it would run in its container (same commands, same environment; container names mapped to
loopback, each named volume to a temporary folder of its own). A data load runs through the core actors
and the ib host actor against the sim gateway, then a training runs on the host trainer (python -m
hosts.training), whose home starts empty and shares nothing with the core's: the bars reach it through
BARS and the model goes to MODELS, where the client lists it; then the host backtester (python -m
hosts.backtest, its own empty home) backtests that model and stores its curve beside it."""

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
from events.messages import LoadData, RunBacktest, StartTraining
from events.roles import ROLES
from ktrdr.client import Client
from ktrdr.embedded import free_port, nats_server_binary, port_open
from ktrdr.training.model_store import ModelStore
from tests.conftest import make_settings
from tests.helpers import wait_terminal

ROOT = Path(__file__).parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
STRATEGY = ROOT / "strategies" / "mlp_rsi_aapl.yaml"


CLUSTER = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())


def test_compose_file_describes_the_stack_with_auth_tls_and_runnable_modules():
    assert set(SERVICES) == {"auth", "nats", "core", "orchestrator-2", "sim-gateway", "ib", "trainer", "backtester"}
    nats = SERVICES["nats"]
    assert nats["command"] == ["-c", "/ktrdr-auth/nats.conf"]
    assert "ktrdr-auth:/ktrdr-auth:ro" in nats["volumes"]
    assert nats["depends_on"]["auth"]["condition"] == "service_completed_successfully"
    auth_cmd = SERVICES["auth"]["command"]
    assert auth_cmd[:5] == ["python", "-m", "ktrdr", "auth", "init"] and "--server-config" in auth_cmd
    assert "nats" in [auth_cmd[i + 1] for i, a in enumerate(auth_cmd) if a == "--tls-host"]  # 4222 is public
    for name, svc in SERVICES.items():
        if name == "nats":
            continue
        assert svc["build"] == "."
        cmd = svc["command"]
        assert cmd[:2] == ["python", "-m"], cmd
        assert importlib.util.find_spec(cmd[2]) is not None, f"{name}: no module {cmd[2]}"
        env = svc.get("environment", {})
        if "NATS_URL" in env:  # every client: TLS, its role's credentials, and the server first
            assert env["NATS_URL"] == "tls://nats:4222" and "nats" in svc["depends_on"]
            assert env["KTRDR_AUTH_DIR"] == "/ktrdr-auth/auth" and "ktrdr-auth:/ktrdr-auth:ro" in svc["volumes"]
    # No data volume is shared between containers: bars, models and checkpoints travel through NATS;
    # each actor's /data is its own cache. (ktrdr-auth holds credentials, read-only but for `auth`.)
    mounts = [(name, v.split(":")[0]) for name, svc in SERVICES.items() for v in svc.get("volumes", [])
              if not v.startswith("ktrdr-auth:")]
    owners = {vol: [n for n, v in mounts if v == vol] for _, vol in mounts}
    assert all(len(names) == 1 for names in owners.values()), owners
    assert SERVICES["trainer"]["volumes"][0] == "trainer-cache:/data"
    assert SERVICES["backtester"]["command"] == ["python", "-m", "hosts.backtest"]
    assert SERVICES["backtester"]["volumes"][0] == "backtester-cache:/data"
    assert all(v.endswith(":ro") for n, svc in SERVICES.items() if n != "auth"
               for v in svc.get("volumes", []) if v.startswith("ktrdr-auth:"))


def test_cluster_variant_has_three_nodes_routing_to_each_other_over_tls(tmp_path: Path):
    services = CLUSTER["services"]
    nodes = sorted(n for n in services if n.startswith("nats-"))
    assert nodes == ["nats-1", "nats-2", "nats-3"]
    assert len({v for n in nodes for v in services[n]["volumes"] if not v.startswith("ktrdr-auth")}) == 3
    assert services["backtester"]["command"] == SERVICES["backtester"]["command"]
    for name in ("core", "ib", "trainer", "backtester"):
        env = services[name]["environment"]
        assert env["NATS_URL"].split(",") == [f"tls://{n}:4222" for n in nodes] and env["KTRDR_REPLICAS"] == "3"
    # what `auth` renders: each node's config routes to the two others, with TLS and the same users
    cmd = services["auth"]["command"]
    args = [a.replace("/ktrdr-auth", str(tmp_path)).replace("/data/nats", str(tmp_path / "store")) for a in cmd[3:]]
    env = {**os.environ, "KTRDR_HOME": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "ktrdr", *args], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    for i, node in enumerate(nodes, start=1):
        conf = (tmp_path / f"{node}.conf").read_text()
        others = [n for n in nodes if n != node]
        assert all(f"@{o}:6222" in conf for o in others) and f"@{node}:6222" not in conf
        assert "tls {" in conf and conf.count("nkey:") == len(ROLES) and f'server_name: "nats-{i}"' in conf


def _orchestrators(services: dict[str, dict[str, Any]]) -> list[str]:
    """The services that run an orchestrator (`python -m actors ... orchestrator ...`)."""
    return sorted(n for n, svc in services.items()
                  if svc.get("command", [])[:3] == ["python", "-m", "actors"] and "orchestrator" in svc["command"])


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.cluster.yml"])
def test_every_service_restarts_when_it_dies_and_orchestrators_have_standbys(name: str):
    services: dict[str, dict[str, Any]] = yaml.safe_load((ROOT / name).read_text())["services"]
    policies = {n: svc.get("restart") for n, svc in services.items()}
    # `auth` runs once and exits 0: restarted only when it failed (unless-stopped would run it forever)
    assert policies.pop("auth") == "on-failure"
    assert set(policies.values()) == {"unless-stopped"}, policies
    nodes = sorted(n for n in services if n.startswith("nats"))
    orchestrators = _orchestrators(services)
    assert len(orchestrators) == max(2, len(nodes)), orchestrators  # a second one at least; one per node
    if len(nodes) > 1:  # each lists its own node first: it stays on the machine it runs next to
        firsts = [services[o]["environment"]["NATS_URL"].split(",")[0] for o in orchestrators]
        assert sorted(firsts) == [f"tls://{n}:4222" for n in nodes], firsts
        assert all(sorted(services[o]["environment"]["NATS_URL"].split(",")) == [f"tls://{n}:4222" for n in nodes]
                   for o in orchestrators)


class _Compose:
    """The compose services as local processes."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.nats_port, self.gw_port, self.monitor_port = free_port(), free_port(), free_port()
        self.nats_url = f"tls://127.0.0.1:{self.nats_port}"
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def volume(self, name: str) -> Path:
        """Where a named volume lives here (created empty, as docker creates it)."""
        path = self.tmp / "volumes" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def data_of(self, service: str) -> Path | None:
        """The folder a service's /data is mounted from (None: the container's own, here a fresh one)."""
        return self.mounts(service).get("/data")

    def mounts(self, service: str) -> dict[str, Path]:
        """Container path -> the local folder its named volume lives in, for one service."""
        out: dict[str, Path] = {}
        for v in SERVICES[service].get("volumes", []):
            source, _, rest = v.partition(":")
            out[rest.split(":")[0]] = self.volume(source)
        return out

    def _translate(self, value: str, mounts: dict[str, Path]) -> str:
        """A container's view (host names, ports, mount points) as this machine's."""
        fixed = {"tls://nats:4222": f"tls://127.0.0.1:{self.nats_port}", "4222": str(self.nats_port),
                 "sim-gateway": "127.0.0.1", "4002": str(self.gw_port),
                 # every container has its own 8222 and 9464; here, one machine: free ports, loopback
                 "8222": str(self.monitor_port), "9464": "0", "0.0.0.0": "127.0.0.1"}
        if value in fixed:
            return fixed[value]
        for target, local in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if value == target or value.startswith(target + "/"):
                return str(local) + value[len(target):]
        return value

    def start(self, name: str) -> subprocess.Popen[str]:
        svc = SERVICES[name]
        mounts = self.mounts(name)
        if name == "auth":  # it writes the config the nats container reads: translate as nats sees it
            mounts = {**self.mounts("nats"), **mounts}
        mounts.setdefault("/data", self.volume(f"{name}-container"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "IB_", "KTRDR_"))}
        env.update({k: self._translate(str(v), mounts) for k, v in svc.get("environment", {}).items()})
        env["KTRDR_HOME"] = env.get("KTRDR_HOME", str(self.tmp / f"{name}-home"))
        if "image" in svc:  # nats: the same server binary the image runs
            cmd = [nats_server_binary(), *(self._translate(c, mounts) for c in svc["command"])]
        else:
            cmd = [sys.executable if c == "python" else self._translate(c, mounts) for c in svc["command"]]
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
def compose(tmp_path: Path) -> Iterator[_Compose]:
    c = _Compose(tmp_path)
    yield c
    c.stop_all()


async def _live_roles(client: Client) -> set[str]:
    return {hb.role for hb in await client.live_actors()}


@pytest.mark.slow
async def test_compose_services_run_a_data_load_and_a_host_training(compose: _Compose):
    trainer_home = compose.data_of("trainer")
    assert trainer_home is not None and trainer_home != compose.data_of("core")
    assert list(trainer_home.iterdir()) == []  # the trainer starts with an empty home
    assert compose.start("auth").wait(120) == 0, compose.log("auth")
    compose.start("nats")
    deadline = asyncio.get_running_loop().time() + 20
    while not port_open("127.0.0.1", compose.nats_port):
        assert compose.procs["nats"].poll() is None, compose.log("nats")
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    for name in ("sim-gateway", "core", "ib", "trainer", "backtester", "orchestrator-2"):
        compose.start(name)
    # the test reads as the cli role would, with the CA the deployment made
    auth_dir = compose.volume("ktrdr-auth") / "auth"
    settings = make_settings(compose.tmp / "client-home", compose.nats_url, auth_dir_override=str(auth_dir))
    async with Client(settings) as client:
        want = {"orchestrator", "dummy", "job-manager", "ib", "trainer", "backtester"}
        roles: set[str] = set()

        async def all_up() -> bool:
            nonlocal roles
            roles = await _live_roles(client)
            dead = [n for n, p in compose.procs.items() if p.poll() is not None and n != "auth"]
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

        # The host backtester (its own empty home) backtests that model: bars from BARS, model from
        # MODELS, its curve stored beside the model.
        model = view.result["artifacts"]["name"]
        bt = RunBacktest(op_id=subjects.new_op_id("backtest"), model=model, start=datetime(2023, 5, 1, tzinfo=UTC))
        await client.submit(bt)
        tested = await wait_terminal(client, bt.op_id, timeout=60)
        assert tested.status == "completed", (tested.error, compose.log("backtester")[-2000:])
        assert tested.worker and tested.worker.startswith("backtester")
        assert tested.result["curve"]["object"] == f"{model}/{bt.op_id}.parquet"
        assert [b["op_id"] for b in await ModelStore(client.js).backtests(model)] == [bt.op_id]

        # Both orchestrators ran beside each other the whole time: one active, one standby (issue 19).

        async def two_orchestrators() -> bool:
            states = sorted(hb.state.split(",")[0].split(" ")[0] for hb in await client.live_actors()
                            if hb.role == "orchestrator")
            return states == ["active", "standby"]

        deadline = asyncio.get_running_loop().time() + 60
        while not await two_orchestrators():
            assert compose.procs["orchestrator-2"].poll() is None, compose.log("orchestrator-2")[-2000:]
            assert asyncio.get_running_loop().time() < deadline, "orchestrator-2 did not announce itself"
            await asyncio.sleep(0.1)  # poll interval of the presence check above

    codes = compose.stop_all()  # SIGTERM, as `docker compose down` sends
    assert codes == {"auth": 0, "nats": 0, "sim-gateway": 0, "core": 0, "ib": 0, "trainer": 0,
                     "backtester": 0, "orchestrator-2": 0}, codes
