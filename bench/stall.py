"""`python -m bench.stall`: hunts the rare 2 s stall between a backtest's submit and its verdict.

The setup of bench/research_steps.py (a bench server, an orchestrator in this process, a backtester
in a process of its own with its steps timed by bench/_steps_actor.py), with short series
(KTRDR_BENCH_STALL_BARS, 2,000 1h bars) so that many runs fit (KTRDR_BENCH_STALL_RUNS, 40), an idle
gap before each run (uniform in 0..KTRDR_BENCH_STALL_GAP_S, 3 s), or with KTRDR_BENCH_STALL_BARE=1
the bare computations bench/research.py runs in this process between its actor runs.
KTRDR_BENCH_STALL_PAUSE_MS (0: off) stops the nats-server or the backtester for up to that long
every 0-1 s: a starved host without loading it. KTRDR_BENCH_STALL_COMPARE=1 alternates, in blocks
of KTRDR_BENCH_STALL_BLOCK (4) runs, the orchestrator's pull loop fetching through nats-py's
PullSubscription.fetch ("before": the code before the fix) and through actors._pull.fetch
("after"); KTRDR_BENCH_STALL_DELAY_MS (0: off) connects the orchestrator through a proxy that
delays what it sends by that long (its pulls late at the server, as on a loaded host). Per run
the time line of what happened: command published, command handled by the
orchestrator, the operation's events, the worker's pull answered, the lease asked and granted, its
steps; a run whose submit -> verdict exceeds KTRDR_BENCH_STALL_MS (1,000) is printed whole. Prints
per mode the stall count, the median and p99 of submit -> verdict."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import actors._orch_intake as intake_mod
import actors._orch_leases as orch_leases_mod
import actors._pull as pull_mod
from bench import research, research_steps
from bench._common import BenchServer, pct, report, time_calls
from bench.nemesis.proxy import upstream_delay_proxy
from events import subjects
from events.messages import RunBacktest
from ktrdr.backtest.run import DEFAULT_CHUNK_BARS
from ktrdr.client import Client

_MARKS: list[tuple[str, float, float]] = []
_MODE = ["after"]
_PSUBS: dict[pull_mod.Consumer, Any] = {}
_fetch = pull_mod.fetch


async def _natspy_fetch(consumer: pull_mod.Consumer, batch: int, expires_s: float) -> list[Any]:
    """The pull loop's fetch before the fix: nats-py's PullSubscription.fetch, one inbox per consumer."""
    psub = _PSUBS.get(consumer)
    if psub is None:
        psub = _PSUBS[consumer] = await consumer.nc.jetstream().pull_subscribe_bind(durable=consumer.name,
                                                                                    stream=consumer.stream)
    return list(await psub.fetch(batch, timeout=expires_s))


async def _either_fetch(consumer: pull_mod.Consumer, batch: int, expires_s: float) -> list[Any]:
    return await (_natspy_fetch if _MODE[0] == "before" else _fetch)(consumer, batch, expires_s)


pull_mod.fetch = _either_fetch  # the orchestrator's command and schedule loops (this process)


def _pauser(pids: list[int], pause_ms: float, stop: threading.Event, seed: int) -> None:
    """A starved host without loading it: every 0-1 s one of `pids` (the nats-server, the backtester)
    is stopped for 0..pause_ms (SIGSTOP, SIGCONT)."""
    rng = random.Random(seed)
    while not stop.wait(rng.uniform(0, 1.0)):
        pid = rng.choice(pids)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
            time.sleep(rng.uniform(0, pause_ms) / 1000)
            os.kill(pid, signal.SIGCONT)


def _timed(owner: Any, attr: str, step: str) -> None:
    time_calls(owner, attr, lambda t0, t1: _MARKS.append((step, t0, t1)))


_timed(intake_mod.CommandIntake, "on_command", "orch: command handled")
_timed(orch_leases_mod.LeaseService, "on_request", "orch: lease request answered")


async def _one(c: Client, ref: str, symbol: str) -> tuple[float, list[tuple[str, float]]]:
    cmd = RunBacktest(op_id=subjects.new_op_id("backtest"), model=ref, symbols=[symbol])
    seen: list[tuple[str, float]] = []
    done = asyncio.Event()

    async def cb(msg: Any) -> None:
        name = msg.subject.rsplit(".", 1)[-1]
        seen.append((f"event {name}", time.time()))
        if name.removeprefix("orch_") in ("completed", "failed", "cancelled", "rejected"):
            done.set()

    sub = await c.nc.subscribe(subjects.ops(cmd.op_id), cb=cb)
    t0 = time.time()
    await c.submit(cmd)
    seen.append(("command published", time.time()))
    await asyncio.wait_for(done.wait(), 120)
    await sub.unsubscribe()
    return t0, seen


async def main() -> dict[str, Any]:
    n = int(os.environ.get("KTRDR_BENCH_STALL_BARS", "2000"))
    runs = int(os.environ.get("KTRDR_BENCH_STALL_RUNS", "40"))
    gap = float(os.environ.get("KTRDR_BENCH_STALL_GAP_S", "3"))
    stall_ms = float(os.environ.get("KTRDR_BENCH_STALL_MS", "1000"))
    bare = os.environ.get("KTRDR_BENCH_STALL_BARE") == "1"
    pause_ms = float(os.environ.get("KTRDR_BENCH_STALL_PAUSE_MS", "0"))
    delay_ms = float(os.environ.get("KTRDR_BENCH_STALL_DELAY_MS", "0"))
    compare = os.environ.get("KTRDR_BENCH_STALL_COMPARE") == "1"
    block = int(os.environ.get("KTRDR_BENCH_STALL_BLOCK", "4"))
    rng = random.Random(int(os.environ.get("KTRDR_BENCH_STALL_SEED", "1")))
    log = Path(tempfile.mkstemp(prefix="ktrdr-bench-stall-", suffix=".jsonl")[1])
    totals: list[float] = []
    stalls: list[dict[str, Any]] = []
    with BenchServer("stall", heartbeat_s=1.0, device="cpu") as srv:
        orch_settings, proxy = srv.settings, None
        if delay_ms:
            proxy, port = await upstream_delay_proxy(int(srv.url.rsplit(":", 1)[1]), delay_ms / 1000)
            orch_settings = dataclasses.replace(srv.settings, nats_url=f"nats://127.0.0.1:{port}")
        stop = threading.Event()
        try:
            tf = "1h"
            async with research_steps.stepped_backtester(srv, orch_settings, log, tf, n) as (
                    c, proc, ref, symbol, files, frame):
                await _one(c, ref, symbol)  # warms the digest cache and the imports
                if pause_ms:
                    threading.Thread(target=_pauser, args=([srv.proc.pid, proc.pid], pause_ms, stop, 2),
                                     daemon=True).start()
                modes: list[str] = []
                for i in range(runs):
                    mode = ("before", "after")[(i // block) % 2] if compare else "after"
                    if compare and mode != _MODE[0]:
                        _MODE[0] = mode
                        await asyncio.sleep(5.5)  # the other mode's pulls all expired (fetch_timeout 5 s)
                    modes.append(mode)
                    if bare:  # as bench/research.py's throughput: the bare computations in this process
                        await asyncio.to_thread(research.bare, files, frame, tf, 0.001, 1.0)
                        await asyncio.to_thread(research.bare, files, frame, tf, 0.001, 1.0, DEFAULT_CHUNK_BARS)
                    else:
                        await asyncio.sleep(rng.uniform(0, gap))
                    offset = log.stat().st_size
                    _MARKS.clear()
                    t0, seen = await _one(c, ref, symbol)
                    total = (seen[-1][1] - t0) * 1000
                    totals.append(total)
                    print(f"  run {i} ({mode}): {total:.0f} ms", flush=True)
                    if total < stall_ms:
                        continue
                    with log.open() as f:
                        f.seek(offset)
                        steps = [json.loads(line) for line in f]
                    line = [(name, (t - t0) * 1000, None) for name, t in seen]
                    line += [(s["step"], (s["t0"] - t0) * 1000, (s["t1"] - s["t0"]) * 1000) for s in steps
                             if s["t1"] >= t0 - 1]
                    line += [(name, (a - t0) * 1000, (b - a) * 1000) for name, a, b in _MARKS]
                    line.sort(key=lambda r: r[1])
                    stalls.append({"run": i, "mode": mode, "ms": round(total), "line": [
                        f"{at:8.1f} ms  {name}" + (f" ({d:.1f} ms)" if d is not None else "") for name, at, d in line]})
                    for row in stalls[-1]["line"]:
                        print("      " + row, flush=True)
        finally:
            stop.set()
            if proxy is not None:
                proxy.close()
            log.unlink(missing_ok=True)
    by_mode: dict[str, Any] = {}
    for mode in sorted(set(modes)):
        xs = [t for t, m in zip(totals, modes, strict=True) if m == mode]
        by_mode[f"submit_to_verdict_{mode}"] = {
            "runs": len(xs), "stalls": sum(t >= stall_ms for t in xs), "median_ms": round(statistics.median(xs), 1),
            "p99_ms": round(pct(xs, 99), 1), "range_ms": [round(min(xs), 1), round(max(xs), 1)]}
    return {"case": {"bars": n, "runs": runs, "gap_s": gap, "bare": bare, "pause_ms": pause_ms, "compare": compare,
                     "delay_ms": delay_ms,
                     "block": block, "stall_ms": stall_ms},
            **by_mode,
            "stalled_runs": {str(s["run"]): s for s in stalls},
            "machine": {"cores": len(os.sched_getaffinity(0)), "load_avg_1m_at_end": os.getloadavg()[0]}}


if __name__ == "__main__":
    report("stall", asyncio.run(main()))
