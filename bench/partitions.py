"""BARS partitions (issue 20, part 3): the job-manager's periodic write into a long series and its peak
memory, partitioned (one object per month for 1m, a manifest written last) against the whole-series
object written the old way (`BarStore(partitioned=False)`), same server, same run.

The series: 10 years of AAPL 1m bars (2015-01-02 .. 2025-01-02, NYSE hours, ~0.98M bars, ~17 MB of
Parquet) synthesised with the simulated gateway's generator (ktrdr.ib.sim.data.generate_bars: loading
it through the paced IB path would take hours of simulated pacing). Then, per mode:
- `write`: a periodic write after appending a day / a week / a month of new bars (the SeriesWriter's
  path: merge into the SeriesBuffer, then write only what the merges touched): seconds and Parquet
  bytes put, medians of ROUNDS appends (each round appends the next span).
- `peak`: in a fresh subprocess, what a load into the long series does on BARS (read the stored
  series, merge a day, write it back): the peak RSS above the process's RSS before it (VmHWM reset),
  beside the largest partition's frame (pandas memory of the biggest month); `read_peak` is the
  peak of the read into the buffer alone.

`python -m bench partitions` (or `python -m bench.partitions`).
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
START, END = pd.Timestamp("2015-01-02", tz="UTC"), pd.Timestamp("2025-01-02", tz="UTC")
SPANS = {"day": pd.Timedelta(days=1), "week": pd.Timedelta(days=7), "month": pd.Timedelta(days=30)}


def _series(start: pd.Timestamp = START, end: pd.Timestamp = END) -> pd.DataFrame:
    from ktrdr.data.calendar import lookup
    from ktrdr.ib.sim.data import generate_bars

    return generate_bars(lookup("AAPL"), "1m", start, end, seed=0)


def _meta(df: pd.DataFrame) -> Any:
    from ktrdr.data.store import SeriesMeta

    return SeriesMeta(symbol="AAPL", timeframe="1m", source="sim", simulated=True, start=df.index[0].isoformat(),
                      end=df.index[-1].isoformat(), rows=len(df), updated_at="")


def _mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def _peak_child(url: str, home: str) -> dict[str, float]:
    """In a fresh process: read the stored series, merge a day, write it (the job-manager's BARS path)."""
    from ktrdr.client import Client
    from ktrdr.config import Settings
    from ktrdr.data.bars_store import BarStore
    from ktrdr.data.store import SeriesBuffer

    day = _series(END, END + pd.Timedelta(days=3))  # the first trading day(s) after the series
    async with Client(Settings(home=Path(home), nats_url=url)) as c:
        store = BarStore(c.js)
        st = await store.stat("AAPL", "1m")
        partitioned = st is not None and st[1].header("Ktrdr-Partitions") is not None
        store.partitioned = partitioned
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before, t0 = _mb("VmRSS"), time.perf_counter()
        stored = await store.load("AAPL", "1m")
        buf = SeriesBuffer("AAPL", "1m", stored.df, stored.meta)
        read_peak = _mb("VmHWM") - before  # the series read and in the buffer
        buf.merge("AAPL", "1m", day, "sim")
        df, meta, _ = buf.snapshot()
        assert meta is not None
        await store.write_series(df, meta, replaces=stored.stored, manifest=stored.manifest,
                                 touched=buf.touched_since(0))
        return {"s": time.perf_counter() - t0, "peak_above_mb": max(0.0, _mb("VmHWM") - before),
                "read_peak_above_mb": max(0.0, read_peak)}


def _peak(url: str, home: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "bench.partitions", "peak", url, home], capture_output=True,
                         text=True, timeout=600, env={**os.environ})
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


async def _mode(srv: Any, full: pd.DataFrame, partitioned: bool) -> dict[str, Any]:
    from ktrdr.client import Client
    from ktrdr.data.bars_store import BarStore
    from ktrdr.data.partitions import split
    from ktrdr.data.store import SeriesBuffer
    from ktrdr.transport import objects

    out: dict[str, Any] = {}
    async with Client(srv.settings) as c:
        await objects.delete(c.js, objects.BARS, "AAPL/1m")
        store = BarStore(c.js, partitioned=partitioned)
        gone = await objects.stat(c.js, objects.BARS, "AAPL/1m")
        st, man = await store.write_series(full, _meta(full), replaces=gone)
        buf = SeriesBuffer("AAPL", "1m", full, _meta(full))
        t = END
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
        # The peak: a fresh series of 10 years (the appends above removed), in this mode.
        await objects.delete(c.js, objects.BARS, "AAPL/1m")
        gone = await objects.stat(c.js, objects.BARS, "AAPL/1m")
        await BarStore(c.js, partitioned=partitioned).write_series(full, _meta(full), replaces=gone)
    runs = [await asyncio.to_thread(_peak, srv.url, str(srv.settings.home)) for _ in range(ROUNDS)]
    out["peak_above_mb"] = round(statistics.median(r["peak_above_mb"] for r in runs), 1)
    out["read_peak_above_mb"] = round(statistics.median(r["read_peak_above_mb"] for r in runs), 1)
    out["load_merge_write_s"] = round(statistics.median(r["s"] for r in runs), 3)
    parts = split(full, "1m")
    out["largest_partition_frame_mb"] = round(max(p.memory_usage(deep=True).sum() for p in parts.values()) / 1e6, 2)
    out["series_frame_mb"] = round(full.memory_usage(deep=True).sum() / 1e6, 2)
    return out


async def main() -> dict[str, Any]:
    from bench._common import BenchServer

    full = await asyncio.to_thread(_series)
    results: dict[str, Any] = {"series": {"rows": len(full), "start": str(START), "end": str(END)}}
    with BenchServer("partitions") as srv:
        for label, partitioned in (("whole", False), ("partitioned", True)):
            results[label] = await _mode(srv, full, partitioned)
    return results


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "peak":
        print(json.dumps(asyncio.run(_peak_child(sys.argv[2], sys.argv[3]))))
    else:
        from bench._common import report

        report("partitions", asyncio.run(main()))
