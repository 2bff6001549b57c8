"""Memory benchmarks, each actor in a process of its own and measured from outside (/proc: VmRSS
now, VmHWM the peak, reset before each load where the kernel allows), each figure next to its
same-run baseline:

- every actor idle and under load (dummy operations; a training workflow; a 10-year 1m data load),
  against a process that only connects to NATS and a bare interpreter;
- replaying a 1M-event operation (`ktrdr ops replay`, its peak RSS from wait4) against the same
  command on an operation that is not stored (imports + connect), at 100k and 1M events: it must
  not grow with the number of events; the old read-everything-then-fold path next to it;
- 10 years of 1m bars: the store's peak (write, read, merge) and the job-manager's peak during a
  load into that series, against the parquet size (bench/_store_child.py: KTRDR_BENCH_STORE points
  the store measurements at another store);
- 1,000 queued dummy operations: the orchestrator's memory and `ktrdr ops list` time, against the
  same with none queued.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from bench._common import (
    ActorProcess,
    Arrivals,
    BenchServer,
    PeakSampler,
    child_env,
    proc_status_mb,
    report,
    reset_peak,
    run_peak,
    submit_all,
    wait_alive,
)
from events import subjects
from events.messages import LoadData, RunDummy, StartTraining
from ktrdr.client import Client
from ktrdr.config import Settings
from ktrdr.ib.sim.threaded import SimGatewayThread

PY = sys.executable
KTRDR = os.path.join(os.path.dirname(sys.executable), "ktrdr")
STRATEGY = Path(__file__).parents[1] / "strategies" / "mlp_rsi_aapl.yaml"
TEN_YEARS = (datetime(2014, 1, 2, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC))
CONNECT_ONLY = ("import asyncio\nfrom ktrdr.client import Client\nfrom ktrdr.config import settings\n"
                "async def m():\n    async with Client(settings()) as c:\n        await c.nc.flush()\n"
                "asyncio.run(m())\n")
OLD_REPLAY = ("import asyncio, sys\nfrom ktrdr.client import Client\nfrom ktrdr.config import settings\n"
              "from ktrdr.ops import fold_all\n"
              "async def m():\n    async with Client(settings()) as c:\n"
              "        fold_all(await c.events(sys.argv[1]))\nasyncio.run(m())\n")


def _mb(x: float) -> float:
    return round(x, 1)


def _baselines(settings: Settings) -> dict[str, Any]:
    env = child_env(settings)
    _, bare, _ = run_peak([PY, "-c", "pass"], env)
    _, connect, _ = run_peak([PY, "-c", CONNECT_ONLY], env)
    return {"bare_interpreter_peak_mb": _mb(bare), "connect_only_peak_mb": _mb(connect)}


def _store_child(mode: str, home: Path, source: Path, settings: Settings) -> dict[str, Any]:
    out = subprocess.run([PY, "-m", "bench._store_child", mode, str(home), str(source)], env=child_env(settings),
                         capture_output=True, check=True, cwd=Path(__file__).parents[1])
    return json.loads(out.stdout)


def _ten_years_source(tmp: Path) -> tuple[Path, int]:
    """10 years of AAPL 1m bars from the simulated gateway's generator, as one parquet file."""
    from ktrdr.data.calendar import lookup
    from ktrdr.ib.sim.data import generate_bars

    path = tmp / "aapl-1m-10y.parquet"
    df = generate_bars(lookup("AAPL"), "1m", *TEN_YEARS)
    df.to_parquet(path)
    return path, len(df)


def _store_figures(mode: str, fig: dict[str, Any]) -> dict[str, Any]:
    """Peak, and what the operation added over the process before it (imports, and for a write
    the frame it writes, already loaded)."""
    return {f"store_{mode}_peak_mb": _mb(fig["peak_mb"]),
            f"store_{mode}_added_mb": _mb(fig["peak_mb"] - fig["rss_before_mb"]),
            f"store_{mode}_s": round(fig["seconds"], 2)}


def _parquet_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in (home / "data").rglob("*.parquet"))


async def actors_and_store(runs_dir: Path) -> dict[str, Any]:
    """Every actor in its own process: idle, then under its load; the store's 10-year figures."""
    out: dict[str, Any] = {}
    with BenchServer("memory") as srv, SimGatewayThread(port=0, latency_s=0.05, time_scale=0.02) as gw:
        s = srv.settings
        out["baseline"] = _baselines(s)
        env = {"IB_PORT": str(gw.port), "IB_CLIENT_ID": "71", "KTRDR_IB_TIME_SCALE": "0.02",
               "KTRDR_ORPHAN_TIMEOUT": "3600"}
        roles = ["orchestrator", "dummy", "job-manager", "ib", "trainer"]
        procs = {r: ActorProcess(s, r, **env) for r in roles}
        try:
            async with Client(s) as c:
                await c.ensure_streams()
                await wait_alive(c, roles)
                await asyncio.sleep(2.0)  # a few heartbeats: idle as it stays
                idle = {r: proc_status_mb(p.pid) for r, p in procs.items()}
                out["idle_rss_mb"] = {r: _mb(v[0]) for r, v in idle.items()}
                out["idle_peak_mb"] = {r: _mb(v[1]) for r, v in idle.items()}
                out["nats_server_idle_rss_mb"] = _mb(proc_status_mb(srv.proc.pid)[0])
                load: dict[str, float] = {}
                # Load 1: 200 dummy operations (8 at a time in the worker, 20 progress events each).
                for r in ("orchestrator", "dummy"):
                    reset_peak(procs[r].pid)
                cmds = [RunDummy(op_id=subjects.new_op_id("dummy"), iterations=20, interval_s=0.01) for _ in range(200)]
                async with Arrivals(c, {x.op_id for x in cmds}, "completed", "failed") as arrivals:
                    await submit_all(c, cmds)
                    await arrivals.wait(300)
                for r in ("orchestrator", "dummy"):
                    load[r] = proc_status_mb(procs[r].pid)[1]
                # Load 2: a training workflow (data child, then the trainer and its torch child).
                load.update(await _train(c, procs["trainer"].pid))
                # Load 3: 10 years of 1m bars.
                out["ten_years_1m"] = await _ten_years(c, s, procs, runs_dir)
                load["job-manager"] = out["ten_years_1m"]["job_manager_peak_mb"]
                load["ib"] = out["ten_years_1m"]["ib_actor_peak_mb"]
                out["load_peak_mb"] = {r: _mb(v) for r, v in load.items()}
                out["nats_server_after_rss_mb"] = _mb(proc_status_mb(srv.proc.pid)[0])
        finally:
            for p in procs.values():
                p.stop()
    out["loads"] = ("orchestrator, dummy: 200 dummy ops x 20 events; trainer: a training workflow, 2 epochs "
                    "(trainer_with_child: the trainer plus its torch child, sampled every 50 ms); "
                    "job-manager, ib: a 1m load into a stored 10-year series")
    out["target"] = "recorded (no target in the issue); each idle actor vs connect_only_peak_mb"
    return out


async def _train(c: Client, trainer_pid: int) -> dict[str, float]:
    reset_peak(trainer_pid)
    cmd = StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                        strategy_yaml=STRATEGY.read_text(), epochs=2, start=datetime(2023, 1, 2, tzinfo=UTC),
                        end=datetime(2023, 10, 2, tzinfo=UTC))
    with PeakSampler({"trainer": trainer_pid}) as sampler:
        async with Arrivals(c, {cmd.op_id}, "completed", "failed") as arrivals:
            await c.submit(cmd)
            await arrivals.wait(600)
    view = await c.view(cmd.op_id)
    assert view.status == "completed", view.error
    return {"trainer": proc_status_mb(trainer_pid)[1], "trainer_with_child": sampler.peak_mb["trainer"]}


async def _ten_years(c: Client, s: Settings, procs: dict[str, ActorProcess], runs_dir: Path) -> dict[str, Any]:
    """The store's peaks on 10 years of 1m bars (each operation in its own process), then the
    job-manager's peak loading the last 5 trading days into that series through the whole path."""
    source, bars = _ten_years_source(runs_dir)
    home = s.home
    r: dict[str, Any] = {"bars": bars}
    base = _store_child("imports", home, source, s)
    w = _store_child("write", home, source, s)  # all but the last 5 trading days
    parquet = _parquet_bytes(home)
    rd = _store_child("read", home, source, s)
    r.update({"parquet_mb": round(parquet / 2**20, 1), "store_imports_rss_mb": _mb(base["rss_before_mb"])})
    r.update(_store_figures("write", w))
    r.update(_store_figures("read", rd))
    # The job-manager reads the series from BARS (the store of record): put what the store wrote
    # there, so the load below fetches only the last 5 trading days, as the figure says.
    from ktrdr.data.bars_store import BarStore
    from ktrdr.data.store import DataStore

    await BarStore(c.js).merge("AAPL", "1m", DataStore(home).read("AAPL", "1m"), "sim")
    jm, ib = procs["job-manager"].pid, procs["ib"].pid
    r["job_manager_idle_rss_mb"] = _mb(proc_status_mb(jm)[0])
    for pid in (jm, ib):
        reset_peak(pid)
    cmd = LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", timeframe="1m", mode="full",
                   start=TEN_YEARS[0], end=TEN_YEARS[1])
    t0 = time.perf_counter()
    async with Arrivals(c, {cmd.op_id}, "completed", "failed") as arrivals:
        await c.submit(cmd)
        await arrivals.wait(900)
    view = await c.view(cmd.op_id)
    assert view.status == "completed", view.error
    r["job_manager_load_s"] = round(time.perf_counter() - t0, 2)
    r["job_manager_segments"] = (view.result or {}).get("segments_planned")
    assert r["job_manager_segments"] and r["job_manager_segments"] < 20, r["job_manager_segments"]  # 5 days
    r["job_manager_peak_mb"] = _mb(proc_status_mb(jm)[1])
    r["ib_actor_peak_mb"] = _mb(proc_status_mb(ib)[1])
    mg = _store_child("merge", home, source, s)  # the same 5 days again: a merge of known bars
    r.update(_store_figures("merge", mg))
    r["peak_vs_parquet"] = {k: round(r[k] / max(r["parquet_mb"], 0.1), 1) for k in
                            ("store_write_peak_mb", "store_read_peak_mb", "store_merge_peak_mb", "job_manager_peak_mb")}
    r["target"] = "recorded against the parquet size (no target in the issue)"
    return r


async def replay_memory(n_small: int = 100_000, n_large: int = 1_000_000) -> dict[str, Any]:
    """`ktrdr ops replay` on 100k and 1M events, peak RSS of the replaying process (wait4)."""
    from bench.backbone import publish_operation

    with BenchServer("replay-mem") as srv:
        s = srv.settings
        async with Client(s) as c:
            await c.ensure_streams()
            small = await publish_operation(c, n_small)
            large = await publish_operation(c, n_large)
        env = child_env(s)
        missing = subjects.new_op_id("dummy")

        def peak(*args: str) -> tuple[float, float]:
            _rc, mb, took = run_peak([KTRDR, "ops", "replay", *args], env)
            return _mb(mb), round(took, 2)

        base, _ = peak(missing)
        r: dict[str, Any] = {"baseline_connect_only_peak_mb": base}
        for label, op in (("100k", small), ("1m", large)):
            r[f"replay_{label}_peak_mb"], r[f"replay_{label}_s"] = peak(op)
        r["replay_1m_json_peak_mb"], r["replay_1m_json_s"] = peak(large, "--json")
        r["replay_100k_paced_peak_mb"], r["replay_100k_paced_s"] = peak(small, "--speed", "1000000")
        r["replay_1m_paced_peak_mb"], r["replay_1m_paced_s"] = peak(large, "--speed", "1000000")
        for label, op in (("100k", small), ("1m", large)):
            _rc, mb, took = run_peak([PY, "-c", OLD_REPLAY, op], env)
            r[f"old_list_path_{label}_peak_mb"], r[f"old_list_path_{label}_s"] = _mb(mb), round(took, 2)
    growth = r["replay_1m_peak_mb"] - r["replay_100k_peak_mb"]
    r["growth_100k_to_1m_mb"] = round(growth, 1)
    r["above_baseline_1m_mb"] = round(r["replay_1m_peak_mb"] - base, 1)
    r["paced_note"] = ("--speed X reads through flow control answered only when the consumer has caught up: "
                       "its backlog is bounded by nats-server's 32 MiB window, not by the number of events")
    r["target"] = "no growth with events: 1M peak within 5 MiB of the 100k peak"
    r["met"] = growth <= 5.0
    return r


async def queued_1000(n: int = 1000, list_runs: int = 5) -> dict[str, Any]:
    """1,000 dummy operations queued behind a busy worker (8 running, the rest waiting): the
    orchestrator's memory and `ktrdr ops list` time, each against the same with none queued."""
    with BenchServer("queued", orphan_timeout_s=3600.0) as srv:
        s = srv.settings
        procs = {r: ActorProcess(s, r, KTRDR_ORPHAN_TIMEOUT="3600") for r in ("orchestrator", "dummy")}
        env = child_env(s)

        def ops_list() -> tuple[float, float]:
            walls, peaks = [], []
            for _ in range(list_runs):
                _rc, mb, took = run_peak([KTRDR, "ops", "list"], env)
                walls.append(took)
                peaks.append(mb)
            return statistics.median(walls), max(peaks)

        try:
            async with Client(s) as c:
                await c.ensure_streams()
                await wait_alive(c, list(procs))
                await asyncio.sleep(2.0)
                orch = procs["orchestrator"].pid
                rss0, _ = proc_status_mb(orch)
                reset_peak(orch)
                list0, list0_peak = ops_list()
                _, _, bare = run_peak([PY, "-c", "pass"], env)
                cmds = [RunDummy(op_id=subjects.new_op_id("dummy"), iterations=60, interval_s=60.0) for _ in range(n)]
                t0 = time.perf_counter()
                async with Arrivals(c, {x.op_id for x in cmds}, "created", "rejected") as arrivals:
                    await submit_all(c, cmds)
                    await arrivals.wait(300)
                created_s = max(arrivals.at.values()) - t0
                await asyncio.sleep(1.0)
                rss1, peak1 = proc_status_mb(orch)
                list1, list1_peak = ops_list()
                t0 = time.perf_counter()
                views = await c.list_operations()
                inproc = time.perf_counter() - t0
                states = {st: sum(1 for v in views if v.status == st) for st in ("queued", "running")}
        finally:
            for p in procs.values():
                p.stop()
    return {"operations": n, "states": states, "orchestrator_rss_idle_mb": _mb(rss0),
            "orchestrator_rss_queued_mb": _mb(rss1), "orchestrator_peak_mb": _mb(peak1),
            "orchestrator_kib_per_queued_op": round((rss1 - rss0) * 1024 / n, 1),
            "submit_to_all_created_s": round(created_s, 2),
            "ops_list_s": round(list1, 3), "ops_list_empty_s": round(list0, 3), "python_startup_s": round(bare, 3),
            "ops_list_peak_mb": _mb(list1_peak), "ops_list_empty_peak_mb": _mb(list0_peak),
            "list_operations_in_process_s": round(inproc, 3),
            "target": "recorded: ops list with 1,000 queued vs with none (same run)"}


async def main() -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ktrdr-bench-mem-") as tmp:
        results["actors"] = await actors_and_store(Path(tmp))
    results["ten_years_1m"] = results["actors"].pop("ten_years_1m")
    results["replay_memory"] = await replay_memory()
    results["queued_1000"] = await queued_1000()
    return msgspec.to_builtins(results)


if __name__ == "__main__":
    report("memory", asyncio.run(main()))
