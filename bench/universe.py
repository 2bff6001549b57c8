"""A universe in one command: `LoadData(symbols=[...])` of 1, 10 and 100 symbols, 2 years of 1h each,
through the whole actor path (client -> orchestrator's universe workflow -> job-manager -> ib actor
-> simulated gateway), IB's pacing windows scaled by TIME_SCALE on both sides. Figures: wall time
against IB's pacing lower bound for the same requests (goal <= 1.1x), the pacing violations the
gateway counted (goal 0), and how evenly the children shared the budget (the longest run of grants
to one symbol while others waited). The 11 instruments the simulated gateway knows are extended
in this process with stock clones (U000, U001, ...) so a 100-symbol universe has 100 contracts.
`KTRDR_BENCH_UNIVERSE_SCALE` overrides TIME_SCALE, `KTRDR_BENCH_UNIVERSE_LEVELS` the levels (1,10,100).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from bench._common import BenchServer
from bench.data import _Stack
from events import subjects
from events.bounds import MAX_UNIVERSE_PARALLEL
from events.messages import LoadData
from ktrdr.client import Client
from ktrdr.data.calendar import DEFAULT_UNIVERSE
from ktrdr.ib.pacing import PacingRules, lower_bound_seconds

TIME_SCALE = float(os.environ.get("KTRDR_BENCH_UNIVERSE_SCALE", "0.01"))  # 10 min -> 6 s
LEVELS = tuple(int(x) for x in os.environ.get("KTRDR_BENCH_UNIVERSE_LEVELS", "1,10,100").split(","))
START, END = datetime(2022, 1, 3, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC)


_next = itertools.count()


def _symbols(n: int) -> list[str]:
    """n fresh symbols (never loaded in this run: the store of record persists between levels)."""
    base = DEFAULT_UNIVERSE["AAPL"]
    out = []
    for _ in range(n):
        i = next(_next)
        sym = f"U{i:04d}"
        DEFAULT_UNIVERSE.setdefault(sym, dataclasses.replace(base, symbol=sym, local_symbol=sym, con_id=900_000 + i))
        out.append(sym)
    return out


def _bound(n_requests: int, contracts: int) -> float:
    """IB's lower bound for n distinct requests spread over `contracts` contracts (scaled windows):
    the 10-minute and per-second rules bind across all; the 2 s burst rule per contract."""
    rules = PacingRules(time_scale=TIME_SCALE)
    per_contract = -(-n_requests // max(1, contracts))
    across = lower_bound_seconds(n_requests, dataclasses.replace(rules, burst_count=10**9))
    return max(across, lower_bound_seconds(per_contract, rules))


def _longest_run(seq: list[str]) -> int:
    return max((len(list(g)) for _, g in itertools.groupby(seq)), default=0)


async def _level(srv: BenchServer, n: int) -> dict[str, Any]:
    symbols = _symbols(n)
    async with _Stack(srv, latency=0.02, time_scale=TIME_SCALE) as st, Client(st.settings) as c:
        gw = st.gw
        first = len(gw.requests)
        cmd = LoadData(op_id=subjects.new_op_id("data"), symbol=symbols[0], symbols=symbols if n > 1 else [],
                       timeframe="1h", mode="full", start=START, end=END,  # type: ignore[arg-type]
                       max_parallel=min(MAX_UNIVERSE_PARALLEL, max(1, n)))
        t0 = time.perf_counter()
        await c.submit(cmd)
        view = await c.watch(cmd.op_id, lambda ev, v: None, idle_timeout=1800)
        wall = time.perf_counter() - t0
        recs = gw.requests[first:]
        failed = (view.result or {}).get("failed", {})
        assert view.status == "completed", view.error
        hist = [r for r in recs if r.outcome != "cancelled"]
        n_req = len(hist)
        bound = _bound(n_req, n)
        order = [r.symbol for r in hist]
        # the longest run of grants to one symbol while at least two symbols still had requests left
        last = {s: max(i for i, x in enumerate(order) if x == s) for s in set(order)}
        contested = [s for i, s in enumerate(order) if sum(1 for e in last.values() if e >= i) >= 2]
        return {"symbols": n, "requests": n_req, "wall_s": round(wall, 2), "pacing_lower_bound_s": round(bound, 2),
                "ratio_to_bound": round(wall / bound, 3) if bound else None,
                "pacing_violations": gw.pacing_violations, "failed_symbols": len(failed),
                "longest_run_one_symbol_contested": _longest_run(contested),
                "bars": (view.result or {}).get("bars", (view.result or {}).get("bars_total"))}


async def main() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with BenchServer("universe") as srv:
        for n in LEVELS:
            runs = [await _level(srv, n) for _ in range(3 if n <= 10 else 1)]
            med = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
            med["runs"] = len(runs)
            med["wall_s_all"] = [r["wall_s"] for r in runs]
            med["median_ratio"] = round(statistics.median(r["ratio_to_bound"] or 0 for r in runs), 3)
            med["pacing_time_scale"] = TIME_SCALE
            med["range"] = f"{START:%Y-%m-%d}..{END:%Y-%m-%d} 1h"
            out[f"universe_{n}"] = med
            print(med, flush=True)
    return out
