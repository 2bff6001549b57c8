"""Object-store benchmarks: a 10-year 1m series through BARS against the same Parquet file on local disk,
in the same run, medians of a few rounds. Each measured operation runs in a fresh subprocess so its
peak RSS (ru_maxrss) is its own; the figures are the seconds and the peak RSS above the subprocess's
RSS just before the operation (input frames already loaded for writes). The peak is the kernel's
high-water mark of this process's memory (VmHWM), reset right before the operation: ru_maxrss would
carry the parent's RSS over the fork into the child.

- `series_*`: a whole series, frame to store and back: local = Parquet file write (fsync) / read;
  NATS put = serialise + conditional put to BARS (what the job-manager's every write costs);
  NATS get = fetch + parse; get via cache (cold) = stream to a cache file + parse from it;
  cache hit = parse the cached file (what a host pays once it has the series).
- `bytes_*`: the Parquet bytes alone, by chunk size (128 KiB is nats-py's default; max_payload is 1 MB),
  plus nats-py's own ObjectStore.get once (it concatenates bytes per chunk).

- `replace (issue 18, F5)`: what replacing and deleting an object costs now that no writer may purge:
  the old chunks retired by one rollup message on their chunk subject, against the purge of that
  subject the writers used to send, at 0.6 / 6 / 60 MB (1x / 10x / 100x), same server, same run:
  the retire alone, a whole replace (put of an existing name) and a delete, medians of REPLACE_ROUNDS.
  `python -m bench.objects replace` runs this part alone.

`python -m bench objects`. The series is EURUSD (24/5: 3.76M bars, about 60 MB of Parquet), the largest
10-year 1m series the simulated gateway serves.
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

ROUNDS = 3
CHUNKS = (128 * 1024, 512 * 1024, 1000 * 1024)
REPLACE_SIZES = (600 * 1024, 6000 * 1024, 60000 * 1024)  # 1x / 10x / 100x
REPLACE_ROUNDS = 5


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    return float("nan")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak RSS (VmHWM) to the current RSS
        f.write("5")


async def _measure(op: str, url: str, path: Path, work: Path, chunk: int) -> dict[str, float]:
    """One operation in this (fresh) process: seconds and peak RSS above the RSS before it."""
    import nats

    from ktrdr.config import Settings
    from ktrdr.data.bars_store import BarStore
    from ktrdr.data.store import DigestCache, SeriesMeta, _write_parquet, from_parquet
    from ktrdr.transport import ensure_streams
    from ktrdr.transport import objects as obj

    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_streams(js, Settings(home=work, nats_url=url))
    df = from_parquet(path) if op in ("local-write", "nats-put") else None
    data = path.read_bytes() if op.startswith("bytes-put") else None
    name = "EURUSD/1m"
    _reset_peak()
    before, t0 = _status_mb("VmRSS"), time.perf_counter()
    if op == "local-write":
        with open(work / "local.parquet", "wb") as f:
            _write_parquet(df, f)
            f.flush()
            os.fsync(f.fileno())
    elif op == "local-read":
        from_parquet(path)
    elif op == "nats-put":
        assert df is not None
        meta = SeriesMeta(symbol="EURUSD", timeframe="1m", source="sim", simulated=True, start=None, end=None,
                          rows=len(df), updated_at="")
        st = await obj.stat(js, obj.BARS, name)
        await BarStore(js, partitioned=False).write(df, meta, replaces=st)  # the whole-series object
    elif op == "nats-get":
        await BarStore(js).load("EURUSD", "1m")
    elif op == "nats-get-cache":
        await BarStore(js, DigestCache(work / f"cache-{time.time_ns()}")).load("EURUSD", "1m")
    elif op == "bytes-put":
        assert data is not None
        await obj.put(js, obj.BARS, f"bytes/{chunk}", data, chunk_size=chunk)
    elif op == "bytes-get":
        await obj.get(js, obj.BARS, f"bytes/{chunk}", max_bytes=1 << 32)
    elif op == "bytes-get-natspy":
        await (await js.object_store(obj.BARS)).get(f"bytes/{chunk}")
    seconds = time.perf_counter() - t0
    await nc.close()
    return {"s": seconds, "peak_above_mb": max(0.0, _status_mb("VmHWM") - before)}


def _run(op: str, url: str, path: Path, work: Path, chunk: int = 512 * 1024) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "bench.objects", op, url, str(path), str(work), str(chunk)],
                         capture_output=True, text=True, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(op: str, url: str, path: Path, work: Path, chunk: int = 512 * 1024,
            rounds: int = ROUNDS) -> tuple[float, float]:
    runs = [_run(op, url, path, work, chunk) for _ in range(rounds)]
    return statistics.median(r["s"] for r in runs), statistics.median(r["peak_above_mb"] for r in runs)


async def _purge_retire(js: Any, bucket: str, nuid: str) -> None:
    """How a writer retired old chunks before issue 18 (F5): a purge of their chunk subject."""
    from ktrdr.transport import objects as obj

    await js.purge_stream(obj._stream(bucket), subject=obj._chunk_subject(bucket, nuid))


async def replace_costs(url: str) -> dict[str, float]:
    """Retire / replace / delete seconds per size, rollup (now) against purge (before), interleaved."""
    import nats

    from ktrdr.transport import objects as obj

    nc = await nats.connect(url)
    js = nc.jetstream()
    rollup = obj._retire
    out: dict[str, float] = {}
    try:
        for size in REPLACE_SIZES:
            data = os.urandom(size)
            runs: dict[str, dict[str, list[float]]] = {m: {"retire": [], "replace": [], "delete": []}
                                                       for m in ("purge", "rollup")}
            for r in range(REPLACE_ROUNDS):
                for mode, retire in (("purge", _purge_retire), ("rollup", rollup)):
                    obj._retire = retire  # type: ignore[assignment]
                    name, t = f"bench/{size}/{mode}/{r}", runs[mode]
                    st = await obj.put(js, obj.BARS, name, data)
                    spare = await obj.put(js, obj.BARS, f"{name}/spare", data)
                    t0 = time.perf_counter()
                    await retire(js, obj.BARS, spare.nuid)
                    t["retire"].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    await obj.put(js, obj.BARS, name, data, replaces=st)
                    t["replace"].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    await obj.delete(js, obj.BARS, name)
                    t["delete"].append(time.perf_counter() - t0)
            obj._retire = rollup  # type: ignore[assignment]
            k = f"{size / 2**20:.1f} MB"
            for mode, t in runs.items():
                for what, xs in t.items():
                    out[f"{k} {what} ({mode}) ms"] = statistics.median(xs) * 1000
            out[f"{k} replace MB/s (rollup)"] = size / 2**20 / (out[f"{k} replace (rollup) ms"] / 1000)
            out[f"{k} replace MB/s (purge)"] = size / 2**20 / (out[f"{k} replace (purge) ms"] / 1000)
        info = await js.stream_info(obj._stream(obj.BARS))
        out["markers left (messages in the bucket after the run)"] = float(info.state.messages)
    finally:
        obj._retire = rollup  # type: ignore[assignment]
        await nc.close()
    return out


async def main() -> dict[str, Any]:
    from bench._common import BenchServer
    from ktrdr.data.calendar import lookup
    from ktrdr.data.store import to_parquet
    from ktrdr.ib.sim.data import generate_bars

    symbol = "EURUSD"
    inst = lookup(symbol)
    assert inst is not None
    df = generate_bars(inst, "1m", datetime(2015, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC))
    work = Path(tempfile.mkdtemp(prefix="ktrdr-bench-objects-"))
    path = work / "series.parquet"
    path.write_bytes(to_parquet(df))
    size_mb = path.stat().st_size / 2**20
    out: dict[str, Any] = {"series": {"symbol": f"{symbol} 1m 2015-2025", "bars": len(df), "parquet_mb": size_mb,
                                      "rounds (median of)": ROUNDS}}
    del df
    with BenchServer("objects") as srv:
        url = srv.url
        series: dict[str, float] = {}
        for label, op in (("local write", "local-write"), ("NATS put", "nats-put"), ("local read", "local-read"),
                          ("NATS get", "nats-get"), ("NATS get via cache (cold)", "nats-get-cache")):
            s, mb = _median(op, url, path, work)
            series[f"{label} s"], series[f"{label} peak MB"] = s, mb
        series["put / local write"] = series["NATS put s"] / series["local write s"]
        series["get / local read"] = series["NATS get s"] / series["local read s"]
        series["job-manager write every 30 s: share"] = series["NATS put s"] / 30.0
        out["series (frame <-> store)"] = series
        raw: dict[str, float] = {}
        for chunk in CHUNKS:
            put_s, _ = _median("bytes-put", url, path, work, chunk)
            get_s, get_mb = _median("bytes-get", url, path, work, chunk)
            k = f"{chunk // 1024} KiB"
            raw |= {f"put {k} s": put_s, f"get {k} s": get_s, f"get {k} peak MB": get_mb}
        natspy_s, natspy_mb = _median("bytes-get-natspy", url, path, work, CHUNKS[0], rounds=1)
        raw |= {"nats-py get 128 KiB s (1 round)": natspy_s, "nats-py get peak MB": natspy_mb}
        out["bytes (Parquet bytes only)"] = raw
    with BenchServer("objects-replace") as srv:
        out["replace (issue 18, F5: rollup now, purge before)"] = await replace_costs(srv.url)
    for p in work.glob("**/*"):
        if p.is_file():
            p.unlink()
    return out


async def _replace_only() -> dict[str, Any]:
    from bench._common import BenchServer

    with BenchServer("objects-replace") as srv:
        return {"replace (issue 18, F5: rollup now, purge before)": await replace_costs(srv.url)}


if __name__ == "__main__" and sys.argv[1:] == ["replace"]:
    from bench._common import report

    report("objects-replace", asyncio.run(_replace_only()))
elif __name__ == "__main__":
    op, url, path, work, chunk = sys.argv[1:6]
    print(json.dumps(asyncio.run(_measure(op, url, Path(path), Path(work), int(chunk)))))
