"""A 3-node cluster runs the same code (`ktrdr up --cluster 3`, streams and buckets at R3): kill -9 of
the node leading OPS during a data load, and of the next leader during the training, and the
training workflow still completes; every event a live subscriber saw is in the stored stream."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from events import subjects
from events.codec import DecodeError, decode_event
from ktrdr.client import Client
from ktrdr.config import Settings
from ktrdr.embedded import free_port
from ktrdr.transport import read_events
from tests.helpers import run_ktrdr

pytestmark = pytest.mark.slow
STRATEGY = str(Path(__file__).parents[2] / "strategies" / "mlp_rsi_aapl.yaml")


def run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_ktrdr(env, *args, timeout=timeout)


@pytest.fixture
def cluster_env(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "IB_PORT", "KTRDR_"))}
    base = free_port()
    env.update({"KTRDR_HOME": str(tmp_path / "ktrdr"), "KTRDR_NATS_PORT": str(base),
                "KTRDR_WEB_PORT": str(free_port()), "KTRDR_IB_TIME_SCALE": "0.1"})
    yield env
    run(env, "down")


def leader_of(env: dict[str, str], stream: str) -> dict:
    status = json.loads(run(env, "status", "--json").stdout)
    return next(s for s in status["servers"] if stream in s.get("leads", []))


async def wait_for(predicate, what: str, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.2)


async def test_losing_the_ops_leader_twice_loses_no_event_and_the_workflow_completes(cluster_env):
    up = run(cluster_env, "up", "--cluster", "3")
    assert up.returncode == 0, up.stderr
    home = Path(cluster_env["KTRDR_HOME"])
    url = (home / "run" / "nats.url").read_text().strip()
    settings = Settings(home=home, nats_url=url)
    seen_live: set[tuple[str, str, int]] = set()

    async with Client(settings, reconnect_attempts=-1) as c:
        async def on_live(msg) -> None:  # type: ignore[no-untyped-def]
            try:
                ev = decode_event(msg.data)
            except DecodeError:
                return
            seen_live.add((msg.subject, ev.actor, getattr(ev, "seq", 0)))

        await c.nc.subscribe(subjects.OPS_ALL, cb=on_live)  # a core subscriber: it sees every attempt
        res = run(cluster_env, "train", STRATEGY, "--epochs", "40", "--start", "2022-01-03", "--end", "2023-12-01",
                  "--no-wait", "--json")
        assert res.returncode == 0, res.stderr
        parent = json.loads(res.stdout)["op_id"]

        async def phase(step: str) -> bool:
            v = await c.view(parent)
            return v.terminal or (v.phase == step and v.percentage > (2 if step == "data" else 30))

        await wait_for(lambda: phase("data"), "the data child running")
        first = leader_of(cluster_env, "OPS")
        os.kill(first["pid"], signal.SIGKILL)  # the leader of OPS, mid-load
        await wait_for(lambda: phase("training"), "the training child running", timeout=240)
        assert run(cluster_env, "up").returncode == 0  # the killed node comes back and rejoins
        second = leader_of(cluster_env, "OPS")
        os.kill(second["pid"], signal.SIGKILL)  # the new leader, mid-training
        view = await c.watch(parent, lambda ev, v: None, idle_timeout=240)
        assert view.status == "completed", (view.error, view.status)
        # (a read served while the killed node's replacement still catches up may lag: read until settled)
        kids = [await c.view(k) for k in view.children]
        for _ in range(100):
            if [k.status for k in kids] == ["completed", "completed"]:
                break
            await asyncio.sleep(0.3)
            kids = [await c.view(k) for k in view.children]
        assert [k.status for k in kids] == ["completed", "completed"]

        mine = {e for e in seen_live if e[0].split(".")[2] in {parent, *view.children}}
        stored: set[tuple[str, str, int]] = set()

        def on_stored(subject: str, data: bytes) -> None:
            try:
                ev = decode_event(data)
            except DecodeError:
                return
            stored.add((subject, ev.actor, getattr(ev, "seq", 0)))

        # A read is served by one replica, and the node restarted above may still be catching up on
        # what it missed while it was down (seen in CI: the whole data child absent from one read).
        # What was stored reaches it; what was lost never does: read again until the read settles.
        loop = asyncio.get_running_loop()
        settle_by = loop.time() + 90
        while True:
            stored.clear()
            await read_events(c.js, [subjects.OPS_ALL], on_stored)
            if not (mine - stored) or loop.time() > settle_by:
                break
            await asyncio.sleep(0.5)
    assert mine and not (mine - stored), sorted(mine - stored)[:5]
