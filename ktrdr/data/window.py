"""SeriesWindow: the SeriesStore a data load merges into when its series is stored in partitions
(ktrdr.data.partitions). It holds the series' manifest and, in memory, only the partitions that merges
since the last write put bars into ("dirty"), so a load into ten years of 1m bars holds a month or
two, not the series:
- `gaps` plans a load from the manifest: each partition's runs of bars (its entry's `runs`) say which
  expected bars it holds, a chunk of the range at a time; a partition listed without runs (a manifest
  written before they existed) is read for that, one at a time, and dropped.
- `merge` reads the partition a segment's bars fall in the first time it is touched (through
  `read_partition`, the adapter's reader: ktrdr.data.bars_store), merges into it and keeps it until
  it is written.
- `dirty` and `written` are the writer's side (bars_store.SeriesWriter): a snapshot of the dirty
  partitions to store, then, once the manifest listing them is stored, those not merged into since
  leave memory. `rebase` puts the dirty partitions on top of someone else's newer manifest after a
  lost compare-and-set.
Thread-safe, and synchronous like every SeriesStore: called from worker threads (a partition read
blocks on the adapter), never from the event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from ktrdr.data.calendar import Instrument, to_utc
from ktrdr.data.gaps import Gap, _contains, find_gaps_in_chunks
from ktrdr.data.partitions import Manifest, PartitionEntry, chunks, split, stored_mask
from ktrdr.data.store import (
    Bound,
    SeriesMeta,
    _members,
    check_source,
    empty_frame,
    merge_frames,
    merged_source,
    normalize_frame,
    slice_bars,
)
from ktrdr.data.timeframes import Timeframe

ReadPartition = Callable[[PartitionEntry], pd.DataFrame]
T = TypeVar("T")

# The threads a SeriesWindow is called on: a pool of their own. A window's call may block on a
# partition read that runs on the event loop and itself uses asyncio.to_thread (decode, the cache);
# on the loop's default pool (cores + 4 threads), enough such callers waiting at once would leave no
# thread for the reads they wait for: a deadlock until the read's timeout.
_WINDOW_THREADS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="series-window")


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on the window threads (as asyncio.to_thread, context included, but never on the
    default pool the partition reads need)."""
    ctx = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_WINDOW_THREADS, functools.partial(ctx.run, fn, *args))


class SeriesWindow:
    """One partitioned series for a load: its manifest and the partitions merged into since the last
    write (see the module's docstring). The symbol/timeframe arguments of the SeriesStore methods are
    this series'."""

    # More dirty partitions than this wakes the writer to store them (`on_full`, SeriesWriter): a long
    # backfill holds a few months of bars, not what its flush interval fetched. A wake-up, not a
    # hard bound: merges go on while the write runs.
    MAX_DIRTY = 4

    def __init__(self, symbol: str, timeframe: str, manifest: Manifest | None, meta: SeriesMeta | None,
                 read_partition: ReadPartition) -> None:
        self.symbol, self.timeframe = symbol, timeframe
        self.manifest = manifest
        self._entries = {e.key: e for e in manifest.partitions} if manifest is not None else {}
        self._dirty: dict[str, pd.DataFrame] = {}
        self._versions: dict[str, int] = {}  # dirty key -> the version that last merged into it
        self._source: str | None = meta.source if meta is not None and self._entries else None
        self._simulated = bool(meta.simulated) if meta is not None else False
        self._read = read_partition
        self._lock = threading.Lock()
        self.on_full: Callable[[], None] | None = None  # set by a SeriesWriter: wakes it from any thread
        self.version = 0
        self.merges = 0
        self.reads: list[str] = []  # keys of the partitions read, in order (what a test or bench checks)

    # --- SeriesStore -------------------------------------------------------------------------------
    def merge(self, symbol: str, tf: Timeframe | str, df: pd.DataFrame, source: str,
              simulated: bool | None = None) -> int:
        """Merge bars (the newest wins) into the partitions they fall in; returns how many timestamps
        are new."""
        check_source(source)
        new = normalize_frame(df)
        new = new[~new.index.duplicated(keep="last")].sort_index()
        with self._lock:
            self.merges += 1
            if new.empty and self._source is not None:
                return 0
            added = 0
            parts = split(new, self.timeframe)
            for key, part in parts.items():
                base = self._dirty.get(key)
                if base is None:
                    base = self._load(key)
                added += int((~_members(base.index.as_unit("ns").asi8, part.index.as_unit("ns").asi8)).sum())
                self._dirty[key] = merge_frames(base, part) if len(base) else part
            self._source = merged_source(self._source, source)
            self._simulated = self._simulated or (source == "sim" if simulated is None else simulated)
            self.version += 1
            for key in parts:
                self._versions[key] = self.version
            full = self.on_full if len(self._dirty) > self.MAX_DIRTY else None
        if full is not None:
            full()
        return added

    def read(self, symbol: str, tf: Timeframe | str, start: Bound = None, end: Bound = None) -> pd.DataFrame:
        lo = to_utc(start, "start") if start is not None else None
        hi = to_utc(end, "end") if end is not None else None
        with self._lock:
            keys = sorted(set(self._entries) | set(self._dirty))
            frames = []
            for key in keys:
                df = self._dirty.get(key)
                if df is None:
                    e = self._entries[key]
                    if (lo is not None and pd.Timestamp(e.end) < lo) or (
                            hi is not None and pd.Timestamp(e.start) >= hi):
                        continue
                    df = self._load(key)
                frames.append(slice_bars(df, lo, hi))
        frames = [f for f in frames if len(f)]
        return pd.concat(frames) if len(frames) > 1 else frames[0] if frames else empty_frame()

    def metadata(self, symbol: str, tf: Timeframe | str) -> SeriesMeta | None:
        with self._lock:
            return self._meta()

    def covered_range(self, symbol: str, tf: Timeframe | str) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        with self._lock:
            bounds = self._bounds()
        return (bounds[0], bounds[1]) if bounds[2] else None

    # --- planning ----------------------------------------------------------------------------------
    def gaps(self, inst: Instrument, tf: Timeframe | str, start: pd.Timestamp, end: pd.Timestamp
             ) -> tuple[list[Gap], pd.DatetimeIndex]:
        """The gaps of [start, end) and their missing bar starts (gaps.find_gaps_in_chunks), from the
        manifest a partition at a time."""
        start, end = to_utc(start, "start"), to_utc(end, "end")
        with self._lock:
            entries, dirty = dict(self._entries), {k: v.index for k, v in self._dirty.items()}

        def stored_in(key: str) -> Callable[[np.ndarray], np.ndarray]:
            def stored(wanted: np.ndarray) -> np.ndarray:
                if key in dirty:
                    return _contains(dirty[key].as_unit("ns").asi8, wanted)
                e = entries.get(key)
                if e is None:
                    return np.zeros(len(wanted), dtype=bool)
                if e.runs is not None:
                    return stored_mask(e.runs, self.timeframe, wanted)
                with self._lock:
                    index = self._load(key).index  # listed without runs: read it, keep only the index
                return _contains(index.as_unit("ns").asi8, wanted)
            return stored

        return find_gaps_in_chunks(inst, tf, ((a, b, stored_in(k)) for k, a, b in chunks(self.timeframe, start, end)))

    # --- the writer's side -------------------------------------------------------------------------
    @property
    def dirty_count(self) -> int:
        return len(self._dirty)

    def dirty(self) -> tuple[dict[str, pd.DataFrame], dict[str, int], SeriesMeta | None, int]:
        """(the dirty partitions, the version each was last merged into at, the series' metadata, the
        version of this snapshot), consistent with each other."""
        with self._lock:
            return dict(self._dirty), dict(self._versions), self._meta(), self.version

    def written(self, manifest: Manifest, versions: dict[str, int]) -> None:
        """`manifest` is stored and lists the partitions snapshotted at `versions`: those not merged
        into since are clean now and leave memory."""
        with self._lock:
            self.manifest = manifest
            self._entries = {e.key: e for e in manifest.partitions}
            for key, v in versions.items():
                if self._versions.get(key) == v:
                    self._dirty.pop(key, None)
                    self._versions.pop(key, None)

    def rebase(self, manifest: Manifest | None, meta: SeriesMeta | None, whole: pd.DataFrame | None = None) -> None:
        """Someone else stored the series since our manifest (outside the lease): theirs from now on,
        our dirty partitions merged on top of their versions of them (`whole`: theirs is a whole-series
        object written the old way, here in full)."""
        with self._lock:
            self.manifest = manifest
            self._entries = {e.key: e for e in manifest.partitions} if manifest is not None else {}
            theirs = split(normalize_frame(whole), self.timeframe) if whole is not None else {}
            self.version += 1
            for key, ours in list(self._dirty.items()):
                base = theirs.pop(key, None)
                if base is None and key in self._entries:
                    base = self._load(key)
                self._dirty[key] = merge_frames(base, ours) if base is not None and len(base) else ours
                self._versions[key] = self.version
            for key, part in theirs.items():  # the rest of a whole object: written as partitions too
                self._dirty[key], self._versions[key] = part, self.version
            if meta is not None:
                self._source = merged_source(meta.source, self._source) if self._source else meta.source
                self._simulated = self._simulated or meta.simulated

    # --- inside the lock ---------------------------------------------------------------------------
    def _load(self, key: str) -> pd.DataFrame:
        e = self._entries.get(key)
        if e is None:
            return empty_frame()
        self.reads.append(key)
        return self._read(e)

    def _bounds(self) -> tuple[pd.Timestamp | None, pd.Timestamp | None, int]:
        first: pd.Timestamp | None = None
        last: pd.Timestamp | None = None
        rows = 0
        spans = [(pd.Timestamp(e.start), pd.Timestamp(e.end), e.rows) for k, e in self._entries.items()
                 if k not in self._dirty and e.rows]
        spans += [(df.index[0], df.index[-1], len(df)) for df in self._dirty.values() if len(df)]
        for a, b, n in spans:
            first = a if first is None or a < first else first
            last = b if last is None or b > last else last
            rows += n
        return first, last, rows

    def _meta(self) -> SeriesMeta | None:
        if self._source is None:
            return None
        first, last, rows = self._bounds()
        return SeriesMeta(symbol=self.symbol, timeframe=self.timeframe, source=self._source,
                          simulated=self._simulated, start=first.isoformat() if first is not None else None,
                          end=last.isoformat() if last is not None else None, rows=rows,
                          updated_at=pd.Timestamp.now(tz="UTC").isoformat())
