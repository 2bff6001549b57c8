"""`python -m bench.research_steps`: where a backtest's time goes through the actor, step by step.

A bench server, an orchestrator in this process and a backtester in a process of its own whose steps
are timed (bench/_steps_actor.py: the lifecycle read, the lease claim, the model's files, the bars,
the run, the curve, the verdict's lease check and publish); the events seen on a core subscription
made before the submit. KTRDR_BENCH_STEPS_TF (1h) and _BARS (87,660: 10 years) pick the series,
_REPS (5) the runs after one unmeasured one; KTRDR_BENCH_STEPS_CANCEL=1 cancels each run after its
fourth progress event and times from the cancel instead (_BARS then 1,000,000 1m bars is the case
of bench/research.py). Prints per step the median start (ms after the submit, or the cancel) and
the median and range of its duration, and writes bench/results/research_steps.json."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from actors.orchestrator import Orchestrator
from bench import research
from bench._common import ROOT, BenchServer, child_env, report, wait_alive
from events import subjects
from events.messages import RunBacktest
from ktrdr.client import Client
from ktrdr.config import Settings
from ktrdr.data.bars_store import BarStore
from ktrdr.training.model_store import ModelStore


async def _one(c: Client, ref: str, symbol: str, cancel: bool) -> tuple[float, list[tuple[str, float]]]:
    """(the time measured from: the submit, or the cancel; the events as (name, wall time))."""
    cmd = RunBacktest(op_id=subjects.new_op_id("backtest"), model=ref, symbols=[symbol])
    seen: list[tuple[str, float]] = []
    done, running = asyncio.Event(), asyncio.Event()

    async def cb(msg: Any) -> None:
        name = msg.subject.rsplit(".", 1)[-1].removeprefix("orch_")
        seen.append((name, time.time()))
        if name == "progress" and sum(n == "progress" for n, _ in seen) >= 4:
            running.set()
        if name in ("completed", "failed", "cancelled", "rejected"):
            done.set()

    sub = await c.nc.subscribe(subjects.ops(cmd.op_id), cb=cb)
    t0 = time.time()
    await c.submit(cmd)
    if cancel:
        await asyncio.wait_for(running.wait(), 600)
        t0 = time.time()
        await c.cancel(cmd.op_id)
    await asyncio.wait_for(done.wait(), 600)
    await sub.unsubscribe()
    return t0, seen


Stack = tuple[Client, "subprocess.Popen[bytes]", str, str, dict[str, bytes], Any]


@contextlib.asynccontextmanager
async def stepped_backtester(srv: BenchServer, orch_settings: Settings, log: Path, tf: str, n: int
                             ) -> AsyncIterator[Stack]:
    """An orchestrator in this process (on `orch_settings`' connection), a backtester process whose
    steps are timed into `log` (bench._steps_actor), and a stored model of `n` bars of `tf` with its
    bars: (client, the backtester's process, the model ref, the symbol, the model's files, the bars).
    For this bench and bench/stall.py."""
    orchestrator = Orchestrator(orch_settings)
    await orchestrator.start()
    proc = await asyncio.to_thread(
        subprocess.Popen, [sys.executable, "-m", "bench._steps_actor", "backtester"], cwd=ROOT,
        env=child_env(srv.settings, KTRDR_BENCH_STEPS_LOG=str(log)), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        async with Client(srv.settings) as c:
            await wait_alive(c, ["orchestrator", "backtester"])
            symbol = research.SYMBOLS[tf]
            frame = research.bars(n, tf)
            files = research.model_files(research.STRATEGY.replace("TF", tf).replace("AAPL", symbol), frame, tf,
                                         symbol)
            await BarStore(c.js).merge(symbol, tf, frame, "sim")
            ref = (await ModelStore(c.js).save("bench_bt", [symbol], [tf], files))["name"]
            yield c, proc, ref, symbol, files, frame
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 20)
        await orchestrator.stop()


async def main() -> dict[str, Any]:
    tf = os.environ.get("KTRDR_BENCH_STEPS_TF", "1h")
    cancel = os.environ.get("KTRDR_BENCH_STEPS_CANCEL") == "1"
    n = int(os.environ.get("KTRDR_BENCH_STEPS_BARS", "1000000" if cancel else "87660"))
    reps = int(os.environ.get("KTRDR_BENCH_STEPS_REPS", "5"))
    log = Path(tempfile.mkstemp(prefix="ktrdr-bench-steps-", suffix=".jsonl")[1])
    starts: dict[str, list[float]] = {}
    durations: dict[str, list[float]] = {}
    totals: list[float] = []
    with BenchServer("steps", heartbeat_s=1.0, device="cpu") as srv, contextlib.ExitStack() as done:
        done.callback(log.unlink, missing_ok=True)
        async with stepped_backtester(srv, srv.settings, log, tf, n) as (c, _proc, ref, symbol, _files, _frame):
            await _one(c, ref, symbol, cancel)  # warms the digest cache and the imports
            for _ in range(reps):
                offset = log.stat().st_size
                t0, seen = await _one(c, ref, symbol, cancel)
                with log.open() as f:
                    f.seek(offset)
                    steps = [json.loads(line) for line in f]
                for name, t in seen:
                    if name != "progress":
                        starts.setdefault(f"event {name}", []).append((t - t0) * 1000)
                for s in steps:
                    if s["t1"] >= t0:  # in cancel mode only what came after the cancel
                        starts.setdefault(s["step"], []).append((s["t0"] - t0) * 1000)
                        durations.setdefault(s["step"], []).append((s["t1"] - s["t0"]) * 1000)
                totals.append((seen[-1][1] - t0) * 1000)
    rows = sorted(starts, key=lambda k: statistics.median(starts[k]))
    out: dict[str, Any] = {"case": {"timeframe": tf, "bars": n, "reps": reps, "from": "cancel" if cancel else "submit",
                                    "total_ms_median": round(statistics.median(totals), 1),
                                    "total_ms_range": [round(min(totals), 1), round(max(totals), 1)]}}
    out["steps"] = {k: {"start_ms": round(statistics.median(starts[k]), 1),
                        **({"ms": round(statistics.median(durations[k]), 1),
                            "range_ms": [round(min(durations[k]), 1), round(max(durations[k]), 1)]}
                           if k in durations else {})} for k in rows}
    out["machine"] = {"cores": len(os.sched_getaffinity(0)), "load_avg_1m_at_end": os.getloadavg()[0]}
    return out


if __name__ == "__main__":
    report("research_steps", asyncio.run(main()))
