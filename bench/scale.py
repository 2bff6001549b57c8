"""Cost as the work grows: events/s and operations/s with 1, 10, 100 and 1,000 dummy operations in
flight at once, and what each operation costs in CPU in every process on its path (orchestrator,
dummy worker, nats-server, the submitting client), measured from /proc in the same run.

Each operation is RunDummy(iterations=10, interval_s=0.02): created, started, 10 progress events,
completed. At concurrency c the bench submits waves of c operations (at least 100 operations per
level) and waits for every `completed`. The worker runs in its own process with room for 1,000
operations at once. Target: CPU per operation flat or falling as c grows (the 1,000 level within
1.2x of the 10 level); KTRDR_BENCH_PROFILE_SCALE=DIR writes a cProfile of the orchestrator and of the
worker to DIR for the whole run.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from bench._common import ActorProcess, Arrivals, BenchServer, cpu_s, report, submit_all, wait_alive
from events import subjects
from events.codec import encode
from events.messages import OperationCreated, OperationRejected, RunDummy
from ktrdr.client import Client

LEVELS = (1, 10, 100, 1000)
ITERATIONS, INTERVAL_S = 10, 0.02


async def _stored(c: Client) -> int:
    return (await c.js.stream_info(subjects.STREAM_OPS)).state.messages


async def _level(c: Client, conc: int, pids: dict[str, int], min_ops: int = 100) -> dict[str, Any]:
    waves = max(1, min_ops // conc)
    n = waves * conc
    cpu0 = {k: cpu_s(p) for k, p in pids.items()}
    client0 = time.process_time()
    ev0 = await _stored(c)
    latencies: list[float] = []
    t0 = time.perf_counter()
    for _ in range(waves):
        cmds = [RunDummy(op_id=subjects.new_op_id("dummy"), iterations=ITERATIONS, interval_s=INTERVAL_S)
                for _ in range(conc)]
        async with Arrivals(c, {x.op_id for x in cmds}, "completed", "failed") as done:
            ts = time.perf_counter()
            await submit_all(c, cmds)
            await done.wait(600)
        latencies += [at - ts for at in done.at.values()]
    wall = time.perf_counter() - t0
    events = await _stored(c) - ev0
    cpu = {k: cpu_s(p) - cpu0[k] for k, p in pids.items()}
    cpu["client"] = time.process_time() - client0
    total = sum(cpu.values())
    return {"concurrency": conc, "operations": n, "events": events, "wall_s": round(wall, 2),
            "ops_per_s": round(n / wall, 1), "events_per_s": round(events / wall),
            "op_latency_median_s": round(statistics.median(latencies), 3),
            "cpu_ms_per_op": round(total / n * 1e3, 2),
            "cpu_ms_per_op_by_process": {k: round(v / n * 1e3, 2) for k, v in cpu.items()},
            "cpu_us_per_event": round(total / events * 1e6, 1),
            "cpu_busy_of_2_cores": round(total / wall / (os.cpu_count() or 1), 2)}


async def scaling() -> dict[str, Any]:
    prof_dir = os.environ.get("KTRDR_BENCH_PROFILE_SCALE")
    with BenchServer("scale") as srv:
        s = srv.settings

        def env(role: str) -> dict[str, str]:
            return {"KTRDR_BENCH_PROFILE": os.path.join(prof_dir, f"{role}.prof")} if prof_dir else {}

        procs = [ActorProcess(s, "orchestrator", **env("orchestrator")),
                 ActorProcess(s, "dummy", concurrency=1000, **env("dummy"))]
        try:
            async with Client(s) as c:
                await c.ensure_streams()
                await wait_alive(c, ["orchestrator", "dummy"])
                pids = {"orchestrator": procs[0].pid, "dummy": procs[1].pid, "nats_server": srv.proc.pid}
                await _level(c, 10, pids, min_ops=20)  # warm-up: imports, first leases, consumers
                rows = [await _level(c, conc, pids) for conc in LEVELS]
        finally:
            for p in procs:
                p.stop()
    by = {r["concurrency"]: r for r in rows}
    ratio = by[1000]["cpu_ms_per_op"] / by[10]["cpu_ms_per_op"]
    return {"rows": rows, "cpu_per_op_1000_vs_10": round(ratio, 2),
            "cpu_per_op_1000_vs_1": round(by[1000]["cpu_ms_per_op"] / by[1]["cpu_ms_per_op"], 2),
            "target": "CPU per operation flat or falling: 1000-level <= 1.2x the 10-level", "met": ratio <= 1.2}


def table(result: dict[str, Any]) -> str:
    """The README table (markdown) of one run."""
    lines = ["| in flight | ops | ops/s | events/s | op latency p50 | CPU ms/op (orch / worker / nats / client) "
             "| CPU µs/event |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        b = r["cpu_ms_per_op_by_process"]
        lines.append(f"| {r['concurrency']} | {r['operations']} | {r['ops_per_s']} | {r['events_per_s']} | "
                     f"{r['op_latency_median_s'] * 1e3:.0f} ms | {r['cpu_ms_per_op']} ({b['orchestrator']} / "
                     f"{b['dummy']} / {b['nats_server']} / {b['client']}) | {r['cpu_us_per_event']} |")
    return "\n".join(lines)


HISTORY_LEVELS = (1_000, 10_000, 100_000)


async def _store_history(c: Client, n: int) -> None:
    """n finished operations stored as an orchestrator stores a rejected one (created, rejected),
    with async publishes: history for `ops list` to read, no actors needed."""
    for start in range(0, n, 1000):
        for _ in range(min(1000, n - start)):
            op_id = subjects.new_op_id("dummy")
            cmd = RunDummy(op_id=op_id, iterations=1)
            await c.js.publish_async(subjects.ops(op_id, "created"), encode(OperationCreated(
                op_id=op_id, actor="orchestrator-bench", domain="dummy", op_type="dummy", command=cmd)))
            await c.js.publish_async(subjects.ops(op_id, "rejected"), encode(OperationRejected(
                op_id=op_id, actor="orchestrator-bench", reason="bench history")))
        await c.js.publish_async_completed()


def _list_wall_s(srv: BenchServer, runs: int = 3) -> float:
    env = {**os.environ, "NATS_URL": srv.url, "KTRDR_HOME": str(srv.settings.home)}
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ktrdr", "ops", "list", "--limit", "50"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


async def history(levels: tuple[int, ...] = HISTORY_LEVELS) -> dict[str, Any]:
    """`ktrdr ops list --limit 50` wall time (median of 3) as finished operations pile up in OPS;
    the baseline is the same command against an empty OPS in the same run."""
    rows = []
    with BenchServer("history") as srv:
        base = await asyncio.to_thread(_list_wall_s, srv)
        stored = 0
        async with Client(srv.settings) as c:
            for n in levels:
                t0 = time.perf_counter()
                await _store_history(c, n - stored)
                stored = n
                rows.append({"operations": n, "store_s": round(time.perf_counter() - t0, 1),
                             "list_s": round(await asyncio.to_thread(_list_wall_s, srv), 2)})
    first = rows[0]["list_s"]
    return {"empty_list_s": round(base, 2), "rows": rows,
            "largest_vs_first": round(rows[-1]["list_s"] / first, 2),
            "target": "list at the largest level <= 1.2x the first", "met": rows[-1]["list_s"] <= 1.2 * first}


def history_table(result: dict[str, Any]) -> str:
    lines = [f"| finished ops in OPS | `ops list` wall (median of 3; empty OPS: {result['empty_list_s']} s) |",
             "|---|---|"]
    lines += [f"| {r['operations']:,} | {r['list_s']} s |" for r in result["rows"]]
    return "\n".join(lines)


async def main() -> dict[str, Any]:
    result = await scaling()
    print(table(result))
    return {"scaling": result}


if __name__ == "__main__":
    if sys.argv[1:2] == ["history"]:  # python -m bench.scale history [LEVEL ...]
        levels = tuple(int(a) for a in sys.argv[2:]) or HISTORY_LEVELS
        hist = asyncio.run(history(levels))
        print(history_table(hist))
        report("scale-history", {"history": hist})
    else:
        report("scale", asyncio.run(main()))
