"""`python -m bench._store_child MODE HOME SOURCE [CUT]`: one store operation in a process of its own,
so its peak memory is its own. Prints one JSON object: rows, seconds, resident memory before the
operation and the peak during it (MiB, /proc/self; the peak is reset just before the operation).

MODE: imports (the baseline: the store's imports, nothing read) | write (the SOURCE parquet, minus
its last CUT trading days, written through the store) | read (the whole stored series) | merge
(the last CUT days of SOURCE merged into the stored series).

The store is KTRDR_BENCH_STORE ("module:factory", default ktrdr.data.store:DataStore): factory(home)
must give write/read/merge(symbol, timeframe, frame, source) as DataStore does. To measure another
store (e.g. one in a NATS object store), point KTRDR_BENCH_STORE at a factory for it.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys
import time
from pathlib import Path

SYMBOL, TF = "AAPL", "1m"


def _mem() -> tuple[float, float]:
    rss = hwm = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return rss, hwm


def _reset() -> None:
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def main(mode: str, home: str, source: str, cut: int = 5) -> None:
    import pandas as pd  # noqa: F401  (the store's own imports are part of the baseline)
    import pyarrow.parquet as pq

    module, _, name = os.environ.get("KTRDR_BENCH_STORE", "ktrdr.data.store:DataStore").partition(":")
    store = getattr(importlib.import_module(module), name)(Path(home))
    frame = None
    if mode in ("write", "merge"):
        frame = pq.read_table(source).to_pandas()
        days = frame.index.normalize().unique()
        tail_from = days[-cut]
        frame = frame[frame.index < tail_from] if mode == "write" else frame[frame.index >= tail_from]
    _reset()
    before, _ = _mem()
    t0 = time.perf_counter()
    if mode == "imports":
        rows = 0
    elif mode == "write":
        rows = store.write(SYMBOL, TF, frame, "sim")
    elif mode == "read":
        rows = len(store.read(SYMBOL, TF))
    elif mode == "merge":
        rows = store.merge(SYMBOL, TF, frame, "sim")
    else:
        raise SystemExit(f"unknown mode {mode}")
    took = time.perf_counter() - t0
    _, peak = _mem()
    print(json.dumps({"mode": mode, "rows": rows, "seconds": took, "rss_before_mb": before, "peak_mb": peak}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], *(int(x) for x in sys.argv[4:]))
