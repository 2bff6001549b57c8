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
import time
from typing import Any

from bench._common import ActorProcess, Arrivals, BenchServer, cpu_s, report, submit_all, wait_alive
from events import subjects
from events.messages import RunDummy
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


async def main() -> dict[str, Any]:
    result = await scaling()
    print(table(result))
    return {"scaling": result}


if __name__ == "__main__":
    report("scale", asyncio.run(main()))
