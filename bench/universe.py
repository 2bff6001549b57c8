"""A universe in one command: `LoadData(symbols=[...])` of 1, 10 and 100 symbols, 2 years of 1h each,
through the whole actor path (client -> orchestrator's universe workflow -> job-manager -> ib actor
-> simulated gateway), IB's pacing windows scaled by TIME_SCALE on both sides. Figures: wall time
against IB's pacing lower bound for the same requests (goal <= 1.1x), the pacing violations the
gateway counted (goal 0), and how evenly the children shared the budget (the longest run of grants
to one symbol while others waited). The 11 instruments the simulated gateway knows are extended
in this process with stock clones (U000, U001, ...) so a 100-symbol universe has 100 contracts.
`KTRDR_BENCH_UNIVERSE_SCALE` overrides TIME_SCALE, `KTRDR_BENCH_UNIVERSE_LEVELS` the levels (1,10,100),
`KTRDR_BENCH_UNIVERSE_RUNS` the runs per level (3 up to 10 symbols, then 1). Each row carries a
`timeline` (see _Trace): where the wall time goes beyond the bound.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
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
RUNS = os.environ.get("KTRDR_BENCH_UNIVERSE_RUNS")  # runs per level (default: 3 up to 10 symbols, then 1)
STALL_S = 60.0  # no IB request asked, granted or answered this long while loads run: print the stacks
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


class _Trace:
    """Where a universe's time goes, recorded in this process (the actors run in it): per IB request
    when the job-manager asked the pacer, when it granted, when the gateway read and answered it and
    when the ib actor released it; per child when its load started and ended in the job-manager; and,
    sampled every 5 ms, the time the pacer had budget (a fresh request could go) and nobody asked."""

    def __init__(self, st: _Stack, t0: float) -> None:
        self.t0 = t0
        self.asks: list[tuple[str, float, float]] = []  # owner, asked, granted
        self.releases: list[float] = []
        self.released: dict[tuple[str, str, str], float] = {}
        self.loads: dict[str, list[float]] = {}  # op_id -> [started, ended]
        self.idle_budget_s = 0.0
        self.reasons: dict[str, int] = {}
        self.gates: list[float] = []
        self.idle_budget_open_s = 0.0  # ... while some child's load had started and not ended
        ib, jm = st.actors[2], st.actors[1]
        lim = ib.client.limiter  # type: ignore[attr-defined]
        self.lim = lim
        acquire, release, handle = lim.acquire, lim.release, jm.handle

        async def traced_acquire(key: Any, *a: Any, owner: str = "", **kw: Any) -> float:
            asked = time.monotonic()
            on_wait, gate = kw.get("on_wait"), kw.get("gate")

            def counted_wait(wait_s: float, why: str) -> None:
                rule = why.split(": ", 1)[-1].split(" ")[0:3]
                self.reasons[" ".join(rule)] = self.reasons.get(" ".join(rule), 0) + 1
                if on_wait is not None:
                    on_wait(wait_s, why)

            async def timed_gate() -> None:
                g0 = time.monotonic()
                try:
                    if gate is not None:
                        await gate()
                finally:
                    self.gates.append(time.monotonic() - g0)

            kw["on_wait"], kw["gate"] = counted_wait, timed_gate
            waited = await acquire(key, *a, owner=owner, **kw)
            self.asks.append((owner, asked, time.monotonic()))
            return waited

        def traced_release(key: Any) -> None:
            self.releases.append(time.monotonic())
            end, duration = key.params.split("|")[:2]
            self.released[(key.contract, end, duration)] = time.monotonic()
            release(key)

        async def traced_handle(op: Any) -> Any:
            self.loads[op.op_id] = [time.monotonic(), 0.0]
            try:
                return await handle(op)
            finally:
                self.loads[op.op_id][1] = time.monotonic()

        lim.acquire, lim.release, jm.handle = traced_acquire, traced_release, traced_handle  # type: ignore[method-assign]
        self._sampler = asyncio.ensure_future(self._sample())

    def _stalled(self, now: float) -> bool:
        """Loads still running and nothing asked, granted or released for STALL_S: say where each
        task of the stack waits (once), so a hang shows its place instead of a silent bench."""
        running = [o for o, (_, e) in self.loads.items() if not e]
        last = max([self.t0, *(g for _, _, g in self.asks), *self.releases])
        if not running or now - last < STALL_S:
            return False
        print(f"universe bench: {len(running)} load(s) running and no IB request for {now - last:.0f} s: "
              f"{running}", flush=True)
        for task in asyncio.all_tasks():
            buf = io.StringIO()
            task.print_stack(limit=8, file=buf)
            if "ktrdr" in buf.getvalue() or "actors" in buf.getvalue():
                print(f"-- {task.get_name()}\n{buf.getvalue()}", flush=True)
        return True

    async def _sample(self) -> None:
        from ktrdr.ib.pacing import RequestKey

        probe = RequestKey("probe", "SMART", "TRADES", "probe")
        last = time.monotonic()
        said_stall = False
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            if not said_stall and int(now) != int(now - 0.005):
                said_stall = self._stalled(now)
            dt, last = now - last, now
            wait, _ = self.lim.required_wait(probe, now)
            if wait == 0.0 and not self.lim._waiting:
                self.idle_budget_s += dt
                if any(s and not e for s, e in self.loads.values()):
                    self.idle_budget_open_s += dt

    def summary(self, gw_recs: list[Any], wall: float, window: float) -> dict[str, Any]:
        self._sampler.cancel()
        t0 = self.t0
        grants = sorted(g for _, _, g in self.asks)
        if not grants:
            return {}
        # how much later than the bound's schedule each request past the first window went: grant(i)
        # minus (grant(i - 60) + window), the lag the limiter adds per window (answer + margin)
        lag = [grants[i] - grants[i - 60] - window for i in range(60, len(grants))]
        lag_gen = [x for i, x in enumerate(lag) if (i % 60) == 0]
        starts = sorted(s for s, _ in self.loads.values())
        ends = sorted(e for _, e in self.loads.values())
        first_ask: dict[str, float] = {}
        for o, a, _ in self.asks:
            first_ask[o] = min(a, first_ask.get(o, a))
        to_first = [first_ask[o] - s for o, (s, _) in self.loads.items() if o in first_ask]
        last_ask: dict[str, float] = {}
        for o, _, g in self.asks:
            last_ask[o] = max(g, last_ask.get(o, g))
        after_last = [e - last_ask[o] for o, (_, e) in self.loads.items() if o in last_ask]
        rtt = [r.answered_at - r.at for r in gw_recs if r.answered_at is not None]
        # from the gateway's answer to the ib actor's release (the instant the 10-minute rule counts)
        seen = []
        for r in gw_recs:
            inst = DEFAULT_UNIVERSE.get(r.symbol)
            rel = self.released.get((str(inst.con_id), r.end, r.duration)) if inst is not None else None
            if rel is not None and r.answered_at is not None:
                seen.append(rel - r.answered_at)
        return {
            "submit_to_first_grant_s": round(grants[0] - t0, 3),
            "first_to_last_grant_s": round(grants[-1] - grants[0], 3),
            "last_grant_to_verdict_s": round(t0 + wall - grants[-1], 3),
            "window_lag_median_s": round(statistics.median(lag_gen), 3) if lag_gen else None,
            "window_lag_sum_s": round(sum(lag_gen), 3) if lag_gen else None,
            "idle_budget_s": round(self.idle_budget_s, 3),
            "idle_budget_load_running_s": round(self.idle_budget_open_s, 3),
            "load_start_to_first_ask_median_s": round(statistics.median(to_first), 3) if to_first else None,
            "last_grant_to_load_end_median_s": round(statistics.median(after_last), 3) if after_last else None,
            "first_load_start_s": round(starts[0] - t0, 3) if starts else None,
            "last_load_end_to_verdict_s": round(t0 + wall - ends[-1], 3) if ends else None,
            "answer_to_release_median_s": round(statistics.median(seen), 3) if seen else None,
            "answer_to_release_max_s": round(max(seen), 3) if seen else None,
            "gateway_answer_median_s": round(statistics.median(rtt), 4) if rtt else None,
            "windows": [(round(grants[i] - t0, 2), round(grants[min(i + 59, len(grants) - 1)] - t0, 2))
                        for i in range(0, len(grants), 60)],
            "pacer_waits": self.lim.waits,
            "wait_reasons": self.reasons,
            "gates": len(self.gates),
            "gate_median_s": round(statistics.median(self.gates), 4) if self.gates else None,
            "pacer_wait_median_s": round(statistics.median(g - a for _, a, g in self.asks), 3),
        }


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
        t0 = time.monotonic()
        trace = _Trace(st, t0)
        await c.submit(cmd)
        view = await c.watch(cmd.op_id, lambda ev, v: None, idle_timeout=1800)
        wall = time.monotonic() - t0
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
                "bars": (view.result or {}).get("bars", (view.result or {}).get("bars_total")),
                "timeline": trace.summary(recs, wall, PacingRules(time_scale=TIME_SCALE).window)}


async def main() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with BenchServer("universe") as srv:
        for n in LEVELS:
            runs = [await _level(srv, n) for _ in range(int(RUNS) if RUNS else 3 if n <= 10 else 1)]
            med = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
            med["runs"] = len(runs)
            med["wall_s_all"] = [r["wall_s"] for r in runs]
            med["median_ratio"] = round(statistics.median(r["ratio_to_bound"] or 0 for r in runs), 3)
            med["pacing_time_scale"] = TIME_SCALE
            med["range"] = f"{START:%Y-%m-%d}..{END:%Y-%m-%d} 1h"
            out[f"universe_{n}"] = med
            print(med, flush=True)
    return out
