"""Two "hosts" on one machine, sharing nothing but the NATS server: the CLI side (orchestrator in this
process, its own KTRDR_HOME) and host trainers started as `python -m hosts.training` with their own
empty KTRDR_HOME. A host trains from BARS and the CLI side lists and pulls the model from MODELS; a host
trainer killed with SIGKILL mid-training is resumed by another host from CHECKPOINTS; `--on gpu` lands
on the trainer in pool gpu every time."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from events import subjects
from events.messages import OperationProgress, OperationStarted, StartTraining, TrainingContext
from ktrdr.config import Settings
from ktrdr.data.bars_store import BarStore
from ktrdr.training.checkpoint_store import CheckpointStore
from ktrdr.training.model_store import ModelStore
from ktrdr.transport.objects import CHECKPOINTS, MODELS, stat
from tests.conftest import make_settings
from tests.helpers import wait_for_event, wait_terminal
from tests.training.conftest import make_bars

ROOT = Path(__file__).parents[2]
STRATEGY = ROOT / "strategies" / "mlp_rsi_aapl.yaml"


class Hosts:
    """Host trainers as separate processes, each with its own empty home."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp, self.url = tmp, url
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, module: str = "hosts.training", **env: str) -> Path:
        home = self.tmp / f"{name}-home"
        home.mkdir()
        full = {k: v for k, v in os.environ.items() if not k.startswith(("KTRDR_", "NATS_"))}
        full.update(NATS_URL=self.url, KTRDR_HOME=str(home), KTRDR_HEARTBEAT_S="0.2", KTRDR_WORKER_TIMEOUT="1.5",
                    KTRDR_DEVICE="cpu", PYTHONPATH=str(ROOT), **env)
        with open(self.tmp / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", module], cwd=self.tmp, env=full,
                                                stdout=log, stderr=subprocess.STDOUT)
        return home

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def hosts(tmp_path: Path, nats_server) -> Iterator[Hosts]:
    h = Hosts(tmp_path, nats_server.url)
    yield h
    h.stop_all()


@pytest.fixture
def core_settings(tmp_path: Path, nats_server) -> Settings:
    home = tmp_path / "cli-home"
    home.mkdir()
    return make_settings(home, nats_server.url, orphan_timeout_s=60.0)


async def wait_trainers(client, n: int, timeout: float = 60.0) -> list[str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        ids = sorted(hb.actor for hb in await client.live_actors() if hb.role == "trainer")
        if len(ids) >= n:
            return ids
        assert loop.time() < deadline, f"{len(ids)} trainers alive, want {n}"
        await asyncio.sleep(0.1)  # presence poll interval


def training(epochs: int, pool: str = "any") -> StartTraining:
    return StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                         strategy_yaml=STRATEGY.read_text(), epochs=epochs, data_mode="none", pool=pool)


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


@pytest.mark.slow
async def test_a_host_with_an_empty_home_trains_from_bars_and_the_cli_side_pulls_the_model(
        start_actors, client, core_settings, hosts, tmp_path):
    await start_actors("orchestrator", settings=core_settings)
    await BarStore(client.js).merge("AAPL", "1h", make_bars(3000, seed=1), "sim")  # as `data import` does
    host_home = hosts.start("gpu-box")
    assert files_under(host_home) == []
    await wait_trainers(client, 1)
    cmd = training(epochs=2)
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id, timeout=120)
    assert view.status == "completed", (view.error, hosts.log("gpu-box")[-3000:])
    r = view.result
    assert r["session_info"]["training_mode"] == "host" and r["session_info"]["host"] == socket.gethostname()
    assert r["session_info"]["actor"].startswith("trainer-") and r["gpu_used"] is False
    # The CLI side lists and pulls it; neither side's disk holds anything of record.
    models = ModelStore(client.js)
    assert [m["name"] for m in await models.list()] == [r["artifacts"]["name"]]
    dest = tmp_path / "pulled"
    dest.mkdir()
    _, paths = await models.pull(r["artifacts"]["name"], dest)
    weights = await stat(client.js, MODELS, r["artifacts"]["model_object"])
    assert weights is not None and "model.pt" in [p.name for p in paths]
    import base64

    want = base64.urlsafe_b64decode(weights.digest.split("=", 1)[1] + "==")
    assert hashlib.sha256((dest / "model.pt").read_bytes()).digest() == want
    host_files = files_under(host_home)
    assert len(host_files) == 1 and host_files[0].startswith("cache/") and host_files[0].endswith(".parquet")
    assert not (core_settings.home / "models").exists() and not (host_home / "models").exists()


@pytest.mark.slow
async def test_a_host_trainer_killed_mid_training_is_resumed_by_another_host_from_checkpoints(
        start_actors, client, core_settings, hosts):
    await start_actors("orchestrator", settings=core_settings)
    await BarStore(client.js).merge("AAPL", "1h", make_bars(3000, seed=1), "sim")
    hosts.start("host-a")
    hosts.start("host-b")  # another machine: its own empty home
    await wait_trainers(client, 2)
    cmd = training(epochs=40)
    await client.submit(cmd)
    started = await wait_for_event(client, cmd.op_id, lambda ev, v: isinstance(ev, OperationStarted), timeout=60)
    first = started.worker
    victim = next(name for name, p in hosts.procs.items() if f"-{p.pid}-" in str(first))

    def third_epoch(ev, view) -> bool:
        return isinstance(view.context, TrainingContext) and view.context.epoch >= 3 and view.phase == "training"

    await wait_for_event(client, cmd.op_id, third_epoch, timeout=120)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while await stat(client.js, CHECKPOINTS, f"{cmd.op_id}/latest") is None:  # uploaded after the epoch
        assert loop.time() < deadline, "no checkpoint stored"
        await asyncio.sleep(0.05)
    hosts.procs[victim].send_signal(signal.SIGKILL)  # mid-epoch: no goodbye, no handing back
    hosts.procs[victim].wait(10)
    view = await wait_terminal(client, cmd.op_id, timeout=180)
    assert view.status == "completed", (view.error, [hosts.log(n)[-2000:] for n in hosts.procs])
    assert view.attempts == 2
    events = await client.events(cmd.op_id)
    workers = [e.worker for e in events if isinstance(e, OperationStarted)]
    assert workers[0] == first and workers[-1] != first
    resumed = [e.progress.message for e in events if isinstance(e, OperationProgress)
               and e.progress.message.startswith("Resumed from checkpoint at epoch ")]
    assert resumed, "the second host resumed from the checkpoint"
    epoch = int(resumed[0].rsplit(" ", 1)[1])
    assert epoch >= 1 and view.result["training_metrics"]["epochs_completed"] > epoch
    assert view.result["session_info"]["actor"] == workers[-1]
    assert await CheckpointStore(client.js).get(cmd.op_id) is None  # removed when the operation ended


@pytest.fixture(scope="module")
def shared_child():
    from ktrdr.training.process import TrainingProcess

    process = TrainingProcess()
    yield process
    process.close()


async def test_on_gpu_lands_on_the_gpu_trainer_every_time(start_actors, client, settings, shared_child, monkeypatch):
    from actors.trainer import Trainer

    monkeypatch.setattr(Trainer, "training_process", shared_child)  # one torch child for both (~4 s each)
    await BarStore(client.js).merge("AAPL", "1h", make_bars(1500, seed=1), "sim")
    home = settings.home
    (home / "gpu").mkdir()
    (home / "cpu").mkdir()
    await start_actors("orchestrator")
    gpu, = await start_actors("trainer", settings=make_settings(home / "gpu", settings.nats_url, pools=["gpu"]))
    cpu, = await start_actors("trainer", settings=make_settings(home / "cpu", settings.nats_url, pools=["cpu"]))
    assert gpu.pools() == ["gpu", "any"] and cpu.pools() == ["cpu", "any"]
    cmds = [training(epochs=1, pool=p) for p in ("gpu", "cpu", "gpu", "gpu", "cpu")]
    for cmd in cmds:
        await client.submit(cmd)
    for cmd in cmds:
        view = await wait_terminal(client, cmd.op_id, timeout=120)
        assert view.status == "completed", view.error
        want = gpu if cmd.pool == "gpu" else cpu
        assert view.result["session_info"]["actor"] == want.id and view.result["session_info"]["pool"] == cmd.pool


async def test_a_host_backtester_with_an_empty_home_backtests_from_models_and_bars(hosts, core_settings, start_actors,
                                                                                  client) -> None:
    from events.messages import RunBacktest
    from tests.backtest.conftest import STRATEGY as BT_STRATEGY
    from tests.backtest.conftest import model_files

    bars = make_bars(600, seed=3)
    await BarStore(client.js).merge("AAPL", "1h", bars, "sim")
    saved = await ModelStore(client.js).save("test_small", ["AAPL"], ["1h"], model_files(BT_STRATEGY, bars))
    await start_actors("orchestrator", settings=core_settings)
    home = hosts.start("backtest-box", module="hosts.backtest")
    cmd = RunBacktest(op_id=subjects.new_op_id("backtest"), model=saved["name"])
    await client.submit(cmd)
    view = await wait_terminal(client, cmd.op_id, timeout=90)
    assert view.status == "completed", (view.error, hosts.log("backtest-box")[-3000:])
    assert view.worker is not None and view.worker.startswith("backtester-")
    assert view.result["bars"] == 600 and view.result["curve"]["object"].startswith(saved["name"] + "/")
    # Nothing of record on the host's disk: the bars it read are a cache keyed by digest.
    assert all(p.startswith("cache") for p in files_under(home)), files_under(home)
