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
import contextlib
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench._common import ActorProcess, Arrivals, BenchServer, cpu_s, proc_status_mb, report, submit_all, wait_alive
from events import subjects
from events.codec import encode
from events.messages import OperationCreated, OperationRejected, RunDummy
from ktrdr.client import Client
from ktrdr.ops.index import Filters
from ktrdr.ops.reader import collect_views
from ktrdr.transport import opsindex
from ktrdr.web.hub import SEARCH_WALK

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
             "| CPU µs/event |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        b = r["cpu_ms_per_op_by_process"]
        lines.append(f"| {r['concurrency']} | {r['operations']} | {r['ops_per_s']} | {r['events_per_s']} | "
                     f"{r['op_latency_median_s'] * 1e3:.0f} ms | {r['cpu_ms_per_op']} ({b['orchestrator']} / "
                     f"{b['dummy']} / {b['nats_server']} / {b['client']}) | {r['cpu_us_per_event']} |")
    return "\n".join(lines)


HISTORY_LEVELS = (1_000, 10_000, 100_000)
LIST_LIMIT = 50
PAGE_LIMIT = 200  # what the page's hub reads at attach (ktrdr.web.hub.Hub.list_limit, the page's rows)


SPREAD_S = 30 * 86400.0  # history made over OPS's 30 days (a research desk's), or all now (burst)


def _op_id_made(ago_s: float) -> str:
    """A dummy operation's id as if made `ago_s` seconds ago."""
    made = datetime.now(UTC) - timedelta(seconds=ago_s)
    return f"dummy-{made:%Y%m%dT%H%M%S%f}-{secrets.token_hex(3)}"


async def _store_history(c: Client, n: int, spread_s: float = 0.0) -> None:
    """n finished operations stored as an orchestrator stores a rejected one (created, rejected),
    with async publishes: history for `ops list` to read, no workers needed. Made (their ids'
    time) uniformly over the last `spread_s` seconds, or now."""
    for start in range(0, n, 1000):
        for _ in range(min(1000, n - start)):
            op_id = _op_id_made(random.uniform(60.0, spread_s)) if spread_s else subjects.new_op_id("dummy")
            cmd = RunDummy(op_id=op_id, iterations=1)
            await c.js.publish_async(subjects.ops(op_id, "created"), encode(OperationCreated(
                op_id=op_id, actor="orchestrator-bench", domain="dummy", op_type="dummy", command=cmd)))
            await c.js.publish_async(subjects.ops(op_id, "rejected"), encode(OperationRejected(
                op_id=op_id, actor="orchestrator-bench", reason="bench history")))
        await c.js.publish_async_completed()


async def _caught_up(c: Client, timeout: float = 1800.0) -> float:
    """Seconds until the index's watermark has passed every lifecycle event OPS stores."""
    t0 = time.perf_counter()
    last = (await c.js.stream_info(subjects.STREAM_OPS)).state.last_seq  # the history's last event
    polls = 0
    while True:
        polls += 1
        with contextlib.suppress(opsindex.IndexMissing):  # (behind() reads what is pending: seldom)
            if (await opsindex.read_mark(c.js)).seq >= last or (polls % 25 == 0 and await opsindex.behind(c.js) == 0):
                return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("the index did not catch up")
        await asyncio.sleep(0.2)


def _list_wall_s(srv: BenchServer, runs: int = 3) -> float:
    env = {**os.environ, "NATS_URL": srv.url, "KTRDR_HOME": str(srv.settings.home)}
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ktrdr", "ops", "list", "--limit", str(LIST_LIMIT)], env=env,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


async def _median_s(call: Any, runs: int = 3) -> float:
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await call()
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


async def _restart(c: Client, s: Any, orch: ActorProcess) -> tuple[ActorProcess, float, float]:
    """Stop the orchestrator, start a new one and submit a command at once: seconds from the start
    to that command accepted (its `created` stored), and the new orchestrator's RSS (MiB) then."""
    orch.stop()
    probe = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=1)
    async with Arrivals(c, {probe.op_id}, "created") as created:
        t0 = time.perf_counter()
        new = ActorProcess(s, "orchestrator")
        await submit_all(c, [probe])
        await created.wait(600)
    return new, created.at[probe.op_id] - t0, proc_status_mb(new.pid)[0]


async def _level(c: Client, srv: BenchServer, orch: ActorProcess, n: int, stored: int,
                 spread_s: float) -> tuple[ActorProcess, dict[str, Any]]:
    t0 = time.perf_counter()
    await _store_history(c, n - stored, spread_s)
    store_s = time.perf_counter() - t0
    catchup_s = await _caught_up(c)
    list_s = await asyncio.to_thread(_list_wall_s, srv)
    inproc_s = await _median_s(lambda: c.list_operations(limit=LIST_LIMIT))  # ops list's read, no process start
    page_s = await _median_s(lambda: c.list_operations(limit=PAGE_LIMIT))  # the hub's read at attach
    ops_read = c.ops_read  # operations of that page read from OPS (ended ones: from the index alone)
    # The page's filtered reads (GET /ops.json runs this call): a status filter, the page before the
    # first (its cursor), and a free-text search for one operation's id piece, which has to walk
    # every hour of the index when it matches almost nothing (the worst case of a search).
    await c.list_operations(limit=LIST_LIMIT)
    cursor = c.next_before
    newest = await c.list_operations(limit=1)
    piece = newest[0].op_id[-6:] if newest else "abcdef"
    status_s = await _median_s(lambda: c.list_operations(limit=LIST_LIMIT, filters=Filters(status="rejected")))
    older_s = await _median_s(lambda: c.list_operations(limit=LIST_LIMIT, before=cursor)) if cursor else 0.0
    text_s = await _median_s(lambda: c.list_operations(limit=LIST_LIMIT, filters=Filters(text=piece)))
    bounded_s = await _median_s(lambda: c.list_operations(limit=LIST_LIMIT, filters=Filters(text=piece),
                                                          max_walk=SEARCH_WALK))  # the page's: a stretch a call
    scan_s = await _median_s(lambda: collect_views(c.js), runs=1)  # what ops list read before the index
    starts = []
    for _ in range(3):
        orch, start_s, rss = await _restart(c, srv.settings, orch)
        starts.append(start_s)
    start_s = statistics.median(starts)
    return orch, {"operations": n, "store_s": round(store_s, 1), "index_catchup_s": round(catchup_s, 1),
                  "list_s": round(list_s, 2), "list_read_s": round(inproc_s, 3), "page_list_s": round(page_s, 3),
                  "page_ops_read": ops_read, "page_status_s": round(status_s, 3), "page_older_s": round(older_s, 3),
                  "page_text_search_s": round(text_s, 3), "page_text_search_bounded_s": round(bounded_s, 3),
                  "log_scan_s": round(scan_s, 2),
                  "start_to_first_command_s": round(start_s, 2), "orchestrator_rss_mib": round(rss, 1)}


async def history(levels: tuple[int, ...] = HISTORY_LEVELS, spread_s: float = SPREAD_S) -> dict[str, Any]:
    """With N finished operations in OPS (and the operations index the orchestrator keeps): `ktrdr
    ops list --limit 50` wall time (median of 3, a process each); the page's list read (what the hub
    reads when a page attaches: Client.list_operations of the newest 200, median of 3); the
    whole-log scan it replaces (once); the time from starting an orchestrator to a command accepted
    (median of 3 restarts), and its RSS then; how long the indexer took to catch up with each batch
    of history. Baseline: the same against an empty OPS in the same run. The history is made over `spread_s` (30 days by
    default; 0: all of it now, the worst case for the newest hour's bucket)."""
    rows = []
    with BenchServer("history") as srv:
        orch = ActorProcess(srv.settings, "orchestrator")
        try:
            async with Client(srv.settings) as c:
                await wait_alive(c, ["orchestrator"])
                stored = 0
                orch, base = await _level(c, srv, orch, 0, 0, spread_s)
                for n in levels:
                    orch, row = await _level(c, srv, orch, n, stored, spread_s)
                    stored = n
                    rows.append(row)
        finally:
            orch.stop()
    first, last = rows[0], rows[-1]
    ratio = {k: round(last[k] / first[k], 2)
             for k in ("list_s", "list_read_s", "start_to_first_command_s", "orchestrator_rss_mib")}
    return {"spread_days": round(spread_s / 86400, 1), "baseline_empty": base, "rows": rows, "largest_vs_first": ratio,
            "target": "list and start at the largest level <= 1.2x the first; RSS flat; the page's list < 1 s",
            "met": {"list": ratio["list_s"] <= 1.2, "list_read": ratio["list_read_s"] <= 1.2,
                    "start": ratio["start_to_first_command_s"] <= 1.2,
                    "rss": ratio["orchestrator_rss_mib"] <= 1.2, "page": last["page_list_s"] < 1.0}}


def history_table(result: dict[str, Any]) -> str:
    b = result["baseline_empty"]
    lines = [f"history made over {result['spread_days']} days", "",
             "| finished ops in OPS | `ops list --limit 50` | its read (in process) | page list (200) "
             "| its ops read from OPS "
             "| whole-log scan (before) "
             "| start to 1st command | orchestrator RSS | index catch-up |", "|---|---|---|---|---|---|---|---|---|"]
    for r in [b, *result["rows"]]:
        lines.append(f"| {r['operations']:,} | {r['list_s']} s | {r.get('list_read_s', '-')} s | {r['page_list_s']} s "
                     f"| {r.get('page_ops_read', '-')} "
                     f"| "
                     f"{r['log_scan_s']} s | "
                     f"{r['start_to_first_command_s']} s | {r['orchestrator_rss_mib']} MiB | "
                     f"{r['index_catchup_s']} s |")
    lines += ["", "the page's filtered reads (GET /ops.json, 50 rows, median of 3):", "",
              "| finished ops in OPS | status filter | the page before (cursor) | free-text search, one match "
              "(whole history) | the same, the page's bounded stretch |", "|---|---|---|---|---|"]
    for r in [b, *result["rows"]]:
        lines.append(f"| {r['operations']:,} | {r.get('page_status_s', '-')} s | {r.get('page_older_s', '-')} s "
                     f"| {r.get('page_text_search_s', '-')} s | {r.get('page_text_search_bounded_s', '-')} s |")
    return "\n".join(lines)


async def main() -> dict[str, Any]:
    result = await scaling()
    print(table(result))
    return {"scaling": result}


if __name__ == "__main__":
    if sys.argv[1:2] in (["history"], ["history-burst"]):  # python -m bench.scale history[-burst] [LEVEL ...]
        levels = tuple(int(a) for a in sys.argv[2:]) or HISTORY_LEVELS
        hist = asyncio.run(history(levels, SPREAD_S if sys.argv[1] == "history" else 0.0))
        print(history_table(hist))
        report("scale-history", {"history": hist})
    else:
        report("scale", asyncio.run(main()))
