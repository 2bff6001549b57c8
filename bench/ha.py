"""Orchestrator takeover, measured (`python -m bench ha`): two orchestrator processes, one active by the
leader lease at its default time (KTRDR_LEADER_TTL_S, 2 s), a dummy worker process running 1, 10 or
100 long operations; kill -9 of the active orchestrator while a new command is submitted at the same
moment. Per round: seconds from the kill until the standby says it is active, until the new command
is created (by the new leader), and until that operation completed; afterwards every long operation
still runs its first attempt (nothing run twice, nothing failed by the takeover). The killed one is
started again as the next standby, so each round kills the current leader. Medians over the rounds.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from bench._common import BenchServer
from bench.faults import FAST, actors, wait_event
from events import subjects
from events.messages import OperationCreated, RunDummy
from ktrdr.client import Client

ROUNDS = 3
SIZES = (1, 10, 100)


async def _orchestrators(c: Client) -> dict[int, str]:
    return {int(h.actor.split("-")[-2]): h.state for h in await c.live_actors()
            if h.role == "orchestrator" and not h.stopping}


async def _wait_state(c: Client, pid: int, prefix: str, timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (state := (await _orchestrators(c)).get(pid, "")).startswith(prefix) and not state.endswith("(starting)"):
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise TimeoutError(f"orchestrator {pid} not {prefix} within {timeout} s: {await _orchestrators(c)}")


async def takeover(live: int, rounds: int = ROUNDS) -> dict[str, Any]:
    env = {k: v for k, v in FAST.items() if k != "KTRDR_WORKER_TIMEOUT"} | {"KTRDR_WORKER_TIMEOUT": "10"}
    with BenchServer(f"ha-{live}", heartbeat_s=0.2) as srv:
        s = srv.settings
        procs: list[subprocess.Popen[bytes]] = []
        active_s, created_s, done_s, attempts = [], [], [], []
        try:
            async with Client(s) as c:
                leader = actors(s, "orchestrator", env=env)
                procs.append(leader)
                await _wait_state(c, leader.pid, "active")
                standby = actors(s, "orchestrator", env=env)
                procs.append(standby)
                await _wait_state(c, standby.pid, "standby")
                worker = _worker(s, live + 8, env)
                procs.append(worker)
                await c.wait_ready(["dummy"], 60)
                long = [RunDummy(op_id=subjects.new_op_id("dummy"), iterations=5000, interval_s=0.1)
                        for _ in range(live)]
                for cmd in long:
                    await c.submit(cmd)
                for cmd in long:
                    await wait_event(c, cmd.op_id, lambda ev, v: v.status == "running", timeout=120)
                for _ in range(rounds):
                    probe = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=1, interval_s=0.01)
                    t0 = time.monotonic()
                    leader.kill()
                    await c.submit(probe)
                    active_s.append(await _wait_state(c, standby.pid, "active") - t0)
                    created_s.append(await wait_event(c, probe.op_id, lambda ev, v: isinstance(ev, OperationCreated))
                                     - t0)
                    done_s.append(await wait_event(c, probe.op_id, lambda ev, v: v.terminal) - t0)
                    await asyncio.to_thread(leader.wait, 30)
                    leader, standby = standby, actors(s, "orchestrator", env=env)
                    procs.append(standby)
                    await _wait_state(c, standby.pid, "standby")
                for cmd in long:
                    v = await c.view(cmd.op_id)
                    attempts.append(v.attempts if v.status == "running" else -1)
                    await c.cancel(cmd.op_id)
        finally:
            for p in procs:
                p.kill()
    return {"live_ops": live, "rounds": rounds, "active_p50_s": statistics.median(active_s),
            "active_max_s": max(active_s), "created_p50_s": statistics.median(created_s),
            "created_max_s": max(created_s), "completed_p50_s": statistics.median(done_s),
            "long_ops_still_first_attempt": sum(1 for a in attempts if a == 1), "long_ops": live}


def _worker(s: Any, width: int, extra: dict[str, str]) -> subprocess.Popen[bytes]:
    """One dummy worker process running up to `width` operations at once."""
    env = {**os.environ, "NATS_URL": s.nats_url or "", "KTRDR_HOME": str(s.home), **FAST, **extra}
    return subprocess.Popen([sys.executable, "-m", "bench._actorproc", f"dummy:{width}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def main() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for live in SIZES:
        out[f"live_{live}"] = await takeover(live)
    return out
