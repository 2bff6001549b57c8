"""The orchestrator's command intake (issue 20, part 2): operations created per second with 10, 100
and 1,000 commands in flight, a burst of 200 and 2,000 one-step dummies command to verdict (one dummy
worker with its default slots, as the embedded stack runs it), and the orchestrator's CPU seconds per
operation, each for the intake one command at a time (KTRDR_ORCH_CMD_BATCH=0, the default, the
before figure) and batched (256), on a server with `sync_interval: always` (the embedded default) and with the
tests' 2 min. Every figure is the median of ROUNDS rounds, the modes alternating in each round.

`python -m bench intake` prints the table and writes bench/results/intake.json.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import _common
from bench._common import ActorProcess, Arrivals, BenchServer, cpu_s, submit_all, wait_alive
from events import subjects
from events.messages import RunDummy
from ktrdr import embedded
from ktrdr.client import Client
from ktrdr.config import Settings

IN_FLIGHT = (10, 100, 1000)
BURSTS = tuple(int(x) for x in os.environ.get("KTRDR_BENCH_INTAKE_BURSTS", "200,2000").split(","))
ROUNDS = int(os.environ.get("KTRDR_BENCH_INTAKE_ROUNDS", "3"))
MODES = {"one at a time": "0", "batched": "256"}
SYNCS = {"always": "always", "2m": '"2m"'}


def _dummies(n: int, iterations: int) -> list[RunDummy]:
    return [RunDummy(op_id=subjects.new_op_id("dummy"), iterations=iterations, interval_s=0.0) for _ in range(n)]


async def _timed(c: Client, n: int, event: str, orch_pid: int) -> tuple[float, float]:
    """(operations/s, orchestrator CPU s per operation) of n commands submitted at once, until each
    stored `event`."""
    cmds = _dummies(n, 1)
    cpu0 = cpu_s(orch_pid)
    async with Arrivals(c, {x.op_id for x in cmds}, event) as got:
        t0 = time.perf_counter()
        await submit_all(c, cmds)
        await got.wait(600)
    wall = max(got.at.values()) - t0
    return n / wall, (cpu_s(orch_pid) - cpu0) / n


async def _one(settings: Settings, batch: str) -> dict[str, Any]:
    env = {"KTRDR_ORCH_CMD_BATCH": batch} if batch else {}
    out: dict[str, Any] = {}
    orch = ActorProcess(settings, "orchestrator", **env)
    try:
        async with Client(settings) as c:
            await wait_alive(c, ["orchestrator"])
            await _timed(c, 20, "created", orch.pid)  # warm-up
            for n in IN_FLIGHT:
                rate, cpu = await _timed(c, n, "created", orch.pid)
                out[f"created_per_s_{n}"], out[f"orch_cpu_ms_per_op_{n}"] = rate, cpu * 1e3
            dummy = ActorProcess(settings, "dummy")
            try:
                await wait_alive(c, ["dummy"])
                for n in BURSTS:
                    rate, cpu = await _timed(c, n, "completed", orch.pid)
                    out[f"burst_per_s_{n}"], out[f"burst_orch_cpu_ms_per_op_{n}"] = rate, cpu * 1e3
            finally:
                dummy.stop()
    finally:
        orch.stop()
    return out


async def intake(rounds: int = ROUNDS) -> dict[str, Any]:
    base = Path(embedded.nats_conf_path()).read_text()
    tmp = Path(tempfile.mkdtemp(prefix="ktrdr-intake-"))
    start = _common.start_nats_server
    result: dict[str, Any] = {}
    try:
        for sync, value in SYNCS.items():
            conf = tmp / f"nats-{sync}.conf"
            conf.write_text(base.replace('sync_interval: "2m"', f"sync_interval: {value}"))
            _common.start_nats_server = lambda store, port, log, conf=conf: start(store, port, log, conf=conf)
            got: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
            for r in range(rounds):
                for mode in (list(MODES) if r % 2 == 0 else list(MODES)[::-1]):
                    with BenchServer(f"intake-{sync}") as srv:
                        got[mode].append(await _one(srv.settings, MODES[mode]))
                    print(f"sync {sync}, {mode}, round {r + 1}: {got[mode][-1]}", file=sys.stderr, flush=True)
            result[sync] = {m: {k: round(statistics.median(row[k] for row in rows), 2) for k in rows[0]}
                            for m, rows in got.items()}
    finally:
        _common.start_nats_server = start
    return result


def table(result: dict[str, Any]) -> str:
    bursts = [n for n in BURSTS if f"burst_per_s_{n}" in next(iter(next(iter(result.values())).values()))]
    cols = ([f"created/s @{n}" for n in IN_FLIGHT] + [f"burst {n} ops/s" for n in bursts]
            + [f"orch CPU ms/op @{n}" for n in (10, 1000)])
    keys = ([f"created_per_s_{n}" for n in IN_FLIGHT] + [f"burst_per_s_{n}" for n in bursts]
            + [f"orch_cpu_ms_per_op_{n}" for n in (10, 1000)])
    lines = ["| sync | intake | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for sync, modes in result.items():
        for mode, row in modes.items():
            lines.append(f"| {sync} | {mode} | " + " | ".join(f"{row[k]:g}" for k in keys) + " |")
    return "\n".join(lines)


async def main() -> dict[str, Any]:
    result = await intake()
    print(table(result))
    return {"intake": result}
