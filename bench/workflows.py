"""Workflow benchmark (issue 9): a training workflow's parent cancel leaves nothing running within
1 s. Measured: the cancel request published -> the last child's `cancelled` event, stored and seen
by a subscriber, median of 10, with the parent's own `cancelled` from the same runs next to it.

The stack runs in-process (orchestrator, job-manager, ib actor) against the simulated gateway on
its own thread, with every IB answer taking a minute, so the data children are in flight (running,
waiting on IB) when the parent is cancelled; the training child is planned but never started.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench._common import BenchServer, pct, report
from bench.data import _Stack, utc
from events import subjects
from events.messages import StartTraining
from ktrdr.client import Client
from ktrdr.ops import OperationView

STRATEGY = Path(__file__).parents[1] / "strategies" / "mlp_rsi_aapl.yaml"


async def _until(c: Client, op_id: str, pred: Any, timeout: float = 60.0) -> OperationView:
    hit = asyncio.Event()
    view = await c.watch(op_id, lambda ev, v: hit.set() if pred(v) else None, stop=hit, idle_timeout=timeout)
    if not hit.is_set():
        raise TimeoutError(f"{op_id}: {view.status}")
    return view


async def _one(c: Client, i: int) -> tuple[float, float, int]:
    # A different range each run: IB's identical-request rule must not slow a later run.
    start = utc(2021, 1, 4) + timedelta(days=7 * i)
    cmd = StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                        strategy_yaml=STRATEGY.read_text(), symbols=["AAPL", "MSFT"], timeframes=["1h"],
                        epochs=1, start=start, end=start + timedelta(days=200), data_mode="full")
    await c.submit(cmd)
    view = await _until(c, cmd.op_id, lambda v: len(v.children) == 3)
    data_kids = view.children[:2]
    for k in data_kids:
        await _until(c, k, lambda v: v.status == "running")
    seen: dict[str, int] = {}
    all_in = asyncio.Event()
    watched = [cmd.op_id, *view.children]

    async def cb(msg: Any) -> None:
        parsed = subjects.parse_ops_subject(msg.subject)
        assert parsed is not None
        op_id = parsed[1]
        seen.setdefault(op_id, time.perf_counter_ns())
        if all(k in seen for k in [cmd.op_id, *data_kids]):
            all_in.set()

    assert c.nc is not None
    subs = [await c.nc.subscribe(subjects.ops(k, "cancelled"), cb=cb) for k in watched]
    t0 = time.perf_counter_ns()
    await c.cancel(cmd.op_id, reason="bench")
    await asyncio.wait_for(all_in.wait(), 30)
    for s in subs:
        await s.unsubscribe()
    kids_ms = max(seen[k] for k in data_kids if k in seen) - t0
    # The training child is never created (or is cancelled before it starts): count it when it was.
    train = view.children[2]
    tv = await c.view(train)
    assert tv.status in ("unknown", "cancelled"), tv.status
    return kids_ms / 1e6, (seen[cmd.op_id] - t0) / 1e6, sum(1 for k in view.children if k in seen)


async def parent_cancel(srv: BenchServer, runs: int = 10) -> dict[str, Any]:
    last_child, parent, counted = [], [], []
    async with _Stack(srv, latency=60.0, time_scale=0.05) as st, Client(st.settings) as c:
        await c.ensure_streams()
        for i in range(runs):
            kids, par, n = await _one(c, i)
            last_child.append(kids)
            parent.append(par)
            counted.append(n)
    med = statistics.median(last_child)
    return {"runs": runs, "last_child_cancelled_median_ms": med, "last_child_cancelled_p90_ms": pct(last_child, 90),
            "last_child_cancelled_max_ms": max(last_child), "parent_cancelled_median_ms": statistics.median(parent),
            "children_cancelled_per_run": statistics.median(counted), "samples_ms": [round(x, 1) for x in last_child],
            "target": "median <= 1000 ms", "met": med <= 1000}


async def main() -> dict[str, Any]:
    with BenchServer("workflows") as srv:
        return {"parent_cancel_to_last_child": await parent_cancel(srv)}


if __name__ == "__main__":
    report("workflows", asyncio.run(main()))
