"""BARS partitions (issue 20, part 3): a data load into a long series, its peak memory and its
periodic writes, and whole and range reads, partitioned (one object per month for 1m, a manifest
written last) against the whole-series object written the old way (`BarStore(partitioned=False)`),
same server, same run, medians of ROUNDS.

The series: 1 and 10 years of AAPL 1m bars (from 2015-01-02, NYSE hours; 10 y is ~0.98M bars, ~17 MB
of Parquet) synthesised with the simulated gateway's generator (ktrdr.ib.sim.data.generate_bars:
loading it through the paced IB path would take hours of simulated pacing). Sections:
- `load_<series>_<N>d`: in a fresh subprocess, the job-manager's steps of a load of the last N trading
  days missing from the series (mode `full` from the series' first day, so the plan covers all of it):
  whole = the previous path (read the whole object into a SeriesBuffer, merge, write it whole);
  partitioned = the job-manager's path now (BarStore.open_window: the manifest only, plan from its runs,
  merge into the partitions touched, SeriesWriter). The fetch is an in-process function returning the
  generated bars of each segment (no IB). Peak RSS above the process's RSS just before (VmHWM reset)
  after a warm-up (the calendar built and one small load run, as a running job-manager has done),
  beside the largest partition: its Parquet object and its frame in memory (pandas, deep), and the
  peak of what tracemalloc sees allocated (Python objects and numpy arrays: the working set without
  Arrow's pool and the C allocator's retained slack, which RSS includes). Times are under tracemalloc.
- `write_*`: a periodic write after appending a day / a week / a month (merge into the buffer, write
  only what the merges touched): seconds and Parquet bytes put.
- `read_*`: a whole-series read and a one-month range read with no cache (every byte from the server).

`python -m bench partitions` (or `python -m bench.partitions`); KTRDR_BENCH_PARTITION_LOADS picks the
loads (default `1y:5,10y:5,10y:50,10y:500`: series:days), KTRDR_BENCH_PARTITION_SECTIONS the sections
(default `reads,writes,loads`).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

ROUNDS = 3
START = pd.Timestamp("2015-01-02", tz="UTC")
ENDS = {"1y": pd.Timestamp("2016-01-02", tz="UTC"), "10y": pd.Timestamp("2025-01-02", tz="UTC")}
SPANS = {"day": pd.Timedelta(days=1), "week": pd.Timedelta(days=7), "month": pd.Timedelta(days=30)}
LOADS = os.environ.get("KTRDR_BENCH_PARTITION_LOADS", "1y:5,10y:5,10y:50,10y:500")
SECTIONS = os.environ.get("KTRDR_BENCH_PARTITION_SECTIONS", "reads,writes,loads").split(",")


def _series(start: pd.Timestamp = START, end: pd.Timestamp = ENDS["10y"]) -> pd.DataFrame:
    from ktrdr.data.calendar import lookup
    from ktrdr.ib.sim.data import generate_bars

    return generate_bars(lookup("AAPL"), "1m", start, end, seed=0)


def _meta(df: pd.DataFrame, symbol: str = "AAPL") -> Any:
    from ktrdr.data.store import SeriesMeta

    return SeriesMeta(symbol=symbol, timeframe="1m", source="sim", simulated=True, start=df.index[0].isoformat(),
                      end=df.index[-1].isoformat(), rows=len(df), updated_at="")


def _mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def _job_steps(c: Any, symbol: str, partitioned: bool, end: pd.Timestamp) -> dict[str, Any]:
    """One load of `symbol` AAPL-like 1m bars up to `end`, as the job-manager runs it (see the module)."""
    import logging

    from ktrdr.cancellation import CancellationToken
    from ktrdr.data.bars_store import BarStore, SeriesWriter
    from ktrdr.data.calendar import lookup
    from ktrdr.data.loading import DataLoadingJob
    from ktrdr.data.planning import Segment
    from ktrdr.data.store import SeriesBuffer

    store = BarStore(c.js, partitioned=partitioned)
    store_obj: Any
    if partitioned:
        opened = await store.open_window(symbol, "1m")
        assert opened is not None
        store_obj, stored = opened
        writer = SeriesWriter(store, store_obj, stored, every_s=30.0, every_segments=200,
                              manifest=store_obj.manifest)
    else:
        current = await store.load(symbol, "1m")
        store_obj = SeriesBuffer(symbol, "1m", current.df, current.meta)
        writer = SeriesWriter(store, store_obj, current.stored, every_s=30.0, every_segments=200)
        del current

    async def fetch(seg: Segment) -> pd.DataFrame:
        return await asyncio.to_thread(_series, seg.start, seg.end)

    async def head() -> Any:
        return START.to_pydatetime()

    job = DataLoadingJob(store_obj, lookup("AAPL"), "1m", "full", START, end, fetch=fetch, head_timestamp=head,
                         cancel=CancellationToken(), source="sim", now=end)
    async with writer.running(logging.getLogger("bench")):
        result = await job.run()
    return {"segments": result.segments_planned, "bars_added": result.bars_added, "writes": writer.writes,
            "partitions_read": len(getattr(store_obj, "reads", []))}


async def _peak_child(url: str, home: str, symbol: str, partitioned: bool, end: str) -> dict[str, Any]:
    from ktrdr.client import Client
    from ktrdr.config import Settings
    from ktrdr.data.calendar import lookup, nyse_calendar
    from ktrdr.data.store import from_tables, read_table, to_parquet
    from ktrdr.ib.sim.data import generate_bars

    async with Client(Settings(home=Path(home), nats_url=url)) as c:
        # Warm-up: what a running job-manager has done before any load (the calendar built, Arrow's
        # pools grown to a partition's size: the first Parquet write of a month of 1m bars in a fresh
        # process takes ~8 MB of allocator arenas once, the first read ~5 MB; later ones none).
        nyse_calendar()
        month = generate_bars(lookup("AAPL"), "1m", START, START + pd.Timedelta(days=31), seed=0)
        for _ in range(2):
            from_tables([read_table(to_parquet(month))])
        del month
        await _job_steps(c, "WARM", partitioned, START + pd.Timedelta(days=40))
        import gc
        import tracemalloc

        gc.collect()
        tracemalloc.start()  # Python and numpy allocations (not Arrow's pool, not allocator slack)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before, t0 = _mb("VmRSS"), time.perf_counter()
        out = await _job_steps(c, symbol, partitioned, pd.Timestamp(end))
        return {**out, "s": time.perf_counter() - t0, "peak_above_mb": max(0.0, _mb("VmHWM") - before),
                "traced_peak_mb": tracemalloc.get_traced_memory()[1] / 1e6}


def _peak(url: str, home: str, symbol: str, partitioned: bool, end: pd.Timestamp) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.partitions", "peak", url, home, symbol,
                          "1" if partitioned else "0", end.isoformat()], capture_output=True, text=True,
                         timeout=900, env={**os.environ})
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


async def _store(c: Any, df: pd.DataFrame, symbol: str, partitioned: bool) -> Any:
    from ktrdr.data.bars_store import BarStore
    from ktrdr.transport import objects

    store = BarStore(c.js, partitioned=partitioned)
    st = await objects.stat(c.js, objects.BARS, f"{symbol}/1m")
    if st is not None and not st.deleted:
        current = await store.load(symbol, "1m")
        for e in current.manifest.partitions if current.manifest else []:
            await objects.delete(c.js, objects.BARS, e.name)
        await objects.delete(c.js, objects.BARS, f"{symbol}/1m")
        st = await objects.stat(c.js, objects.BARS, f"{symbol}/1m")
    return await store.write_series(df, _meta(df, symbol), replaces=st)


def _trading_days_back(df: pd.DataFrame, days: int) -> pd.Timestamp:
    """The start of the `days`-th last trading day of `df`: a load of `days` days starts there."""
    dates = pd.DatetimeIndex(df.index).normalize().unique()
    return dates[-days]


async def _loads(srv: Any, series: dict[str, pd.DataFrame]) -> dict[str, Any]:
    from ktrdr.client import Client
    from ktrdr.data.partitions import split

    out: dict[str, Any] = {}
    for spec in LOADS.split(","):
        label, days_text = spec.split(":")
        days = int(days_text)
        full = series[label]
        cut = _trading_days_back(full, days)
        stored = full[full.index < cut]
        parts = split(full, "1m")
        runs: dict[str, list[dict[str, Any]]] = {"whole": [], "partitioned": []}
        for _ in range(ROUNDS):
            for mode, partitioned in (("whole", False), ("partitioned", True)):
                async with Client(srv.settings) as c:
                    await _store(c, stored, "AAPL", partitioned)
                runs[mode].append(await asyncio.to_thread(_peak, srv.url, str(srv.settings.home), "AAPL",
                                                          partitioned, ENDS[label]))
        from ktrdr.data.store import to_parquet

        largest = max(parts.values(), key=len)
        row: dict[str, Any] = {
            "stored_rows": len(stored), "days_loaded": days,
            "largest_partition_frame_mb": round(largest.memory_usage(deep=True).sum() / 1e6, 3),
            "largest_partition_parquet_mb": round(len(to_parquet(largest)) / 1e6, 3),
            "series_frame_mb": round(stored.memory_usage(deep=True).sum() / 1e6, 1),
        }
        for mode, rs in runs.items():
            row[f"{mode}_peak_above_mb"] = round(statistics.median(r["peak_above_mb"] for r in rs), 1)
            row[f"{mode}_traced_peak_mb"] = round(statistics.median(r["traced_peak_mb"] for r in rs), 1)
            row[f"{mode}_s"] = round(statistics.median(r["s"] for r in rs), 3)
            row[f"{mode}_segments"] = rs[0]["segments"]
            row[f"{mode}_partitions_read"] = rs[0]["partitions_read"]
        out[f"load_{label}_{days}d"] = row
        print(f"load {label} {days}d: {row}", file=sys.stderr, flush=True)
    return out


async def _writes(srv: Any, full: pd.DataFrame, partitioned: bool) -> dict[str, Any]:
    from ktrdr.client import Client
    from ktrdr.data.bars_store import BarStore
    from ktrdr.data.store import SeriesBuffer

    out: dict[str, Any] = {}
    async with Client(srv.settings) as c:
        store = BarStore(c.js, partitioned=partitioned)
        st, man = await _store(c, full, "AAPL", partitioned)
        buf = SeriesBuffer("AAPL", "1m", full, _meta(full))
        t = ENDS["10y"]
        for name, span in SPANS.items():
            secs, written = [], []
            for _ in range(ROUNDS):
                new = await asyncio.to_thread(_series, t, t + span)
                t += span
                version = buf.version
                buf.merge("AAPL", "1m", new, "sim")
                df, meta, _ = buf.snapshot()
                before, t0 = store.bytes_written, time.perf_counter()
                st, man = await store.write_series(df, meta, replaces=st, manifest=man,  # type: ignore[arg-type]
                                                   touched=buf.touched_since(version))
                secs.append(time.perf_counter() - t0)
                written.append(store.bytes_written - before)
            out[f"write_{name}_s"] = round(statistics.median(secs), 4)
            out[f"write_{name}_mb"] = round(statistics.median(written) / 1e6, 3)
    return out


async def _reads(srv: Any, series: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Whole and one-month reads, no cache, the two layouts alternating (same server, same run)."""
    from ktrdr.client import Client
    from ktrdr.data.bars_store import BarStore

    out: dict[str, Any] = {}
    async with Client(srv.settings) as c:
        for label, full in series.items():
            await _store(c, full, "WHOLE", False)
            await _store(c, full, "PART", True)
            reader = BarStore(c.js)
            month = pd.Timestamp(f"{ENDS[label].year - 1}-06-01", tz="UTC")  # one partition's month
            spans = {"whole": (None, None), "month": (month, month + pd.DateOffset(months=1))}
            for what, (lo, hi) in spans.items():
                secs: dict[str, list[float]] = {"whole": [], "partitioned": []}
                for _ in range(max(ROUNDS, 5)):
                    for mode, sym in (("whole", "WHOLE"), ("partitioned", "PART")):
                        t0 = time.perf_counter()
                        await reader.read(sym, "1m", lo, hi)
                        secs[mode].append(time.perf_counter() - t0)
                w, p = statistics.median(secs["whole"]), statistics.median(secs["partitioned"])
                out[f"read_{what}_{label}"] = {"whole_s": round(w, 4), "partitioned_s": round(p, 4),
                                               "ratio": round(p / w, 2)}
                print(f"read {what} {label}: {out[f'read_{what}_{label}']}", file=sys.stderr, flush=True)
    return out


async def main() -> dict[str, Any]:
    from bench._common import BenchServer

    series = {label: await asyncio.to_thread(_series, START, end) for label, end in ENDS.items()}
    results: dict[str, Any] = {"series": {label: len(df) for label, df in series.items()}}
    with BenchServer("partitions") as srv:
        if "reads" in SECTIONS:
            results.update(await _reads(srv, series))
        if "writes" in SECTIONS:
            for label, partitioned in (("whole", False), ("partitioned", True)):
                results[f"writes_{label}"] = await _writes(srv, series["10y"], partitioned)
        if "loads" in SECTIONS:
            results.update(await _loads(srv, series))
    return results


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "peak":
        print(json.dumps(asyncio.run(_peak_child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1",
                                                 sys.argv[6]))))
    else:
        from bench._common import report

        report("partitions", asyncio.run(main()))
