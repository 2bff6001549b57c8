"""Bars as frames and Parquet: the SeriesStore protocol a data load works against, its two
implementations (the in-memory SeriesBuffer and the local DataStore), and the DigestCache that keeps
copies of stored objects on a host's disk.

The store of record is the NATS object bucket BARS (ktrdr/data/bars_store.py): Parquet partitions
per (symbol, timeframe, period) and a manifest with a SeriesMeta in its headers. This module is the NATS-free part:
- `SeriesStore`: what a DataLoadingJob calls on the store it loads into (`covered_range`, `read`,
  `metadata`, `merge`), synchronous because the job calls it on worker threads.
- `SeriesBuffer`: one whole series in memory, a SeriesStore, so a DataLoadingJob merges fetched
  segments into it (from several threads) and a SeriesWriter writes snapshots of it to BARS (a local
  load of a series stored the old way; the job-manager's loads use ktrdr.data.window.SeriesWindow,
  which holds only the partitions a load touches).
  Merged segments are kept aside and folded in lazily, so a load of thousands of segments does not
  re-sort the whole series for each one.
- `DigestCache`: `KTRDR_HOME/cache/<sha256 hex>.parquet`, written atomically (temp file + rename),
  keyed by the object's SHA-256 digest so a cached copy is never stale, bounded in size and in the
  free space it leaves on its disk, the least recently used files evicted first; a full disk makes a
  cache miss, never a failed read or write, and leaves no temp file. Deleting the folder loses nothing.
- `DataStore`: the former local store, a SeriesStore with one Parquet series per (symbol, timeframe)
  under `home/data/` (`{SYMBOL}/{tf}.parquet`, `{tf}.meta.json`, `{tf}.lock`); kept for offline tools,
  benchmarks and tests (a load into it needs no server). Every
  write goes to a temp file, is fsynced and `os.replace`d; `merge` holds an exclusive `fcntl.flock`.

Frames everywhere: DatetimeIndex named "timestamp" (UTC, bar start), float64 columns
open, high, low, close, volume.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import io
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol, TypeAlias, runtime_checkable

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ktrdr import disk
from ktrdr.config import CACHE_MAX_BYTES
from ktrdr.data.calendar import normalize_symbol, to_utc
from ktrdr.data.partitions import keys_of
from ktrdr.data.timeframes import Timeframe, parse_timeframe
from ktrdr.errors import DataError, ValidationError
from ktrdr.files import atomic_write

COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
SOURCES: tuple[str, ...] = ("ib", "sim", "import", "mixed")


class SeriesMeta(msgspec.Struct, kw_only=True):
    symbol: str
    timeframe: str
    source: str  # "ib", "sim", "import" or "mixed" (merged from several sources)
    simulated: bool  # True when any bar came from the simulated gateway
    start: str | None  # ISO UTC of the first bar start
    end: str | None  # ISO UTC of the last bar start
    rows: int
    updated_at: str  # ISO UTC
    digest: str = ""  # the stored object's SHA-256 ("SHA-256=<base64url>"), filled in when read from BARS


def empty_frame() -> pd.DataFrame:
    """A frame with no bars and the store's columns, dtypes and index."""
    idx = pd.DatetimeIndex([], tz="UTC", name="timestamp").as_unit("ns")
    return pd.DataFrame({c: pd.Series(dtype="float64", index=idx) for c in COLUMNS}, index=idx)


def normalize_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Coerce `df` to the store's shape: UTC ns DatetimeIndex "timestamp", float64 OHLCV columns.

    A "timestamp" column is used as the index when the index is not already datetimes."""
    if df is None or len(df) == 0:
        return empty_frame()
    if not isinstance(df.index, pd.DatetimeIndex):
        if "timestamp" in df.columns:
            df = df.set_index("timestamp")
        else:
            raise DataError("bars need a DatetimeIndex or a 'timestamp' column")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"bars are missing columns: {', '.join(missing)}")
    idx = pd.DatetimeIndex(df.index)
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    out = pd.DataFrame({c: df[c].to_numpy(dtype="float64") for c in COLUMNS}, index=idx.as_unit("ns"))
    out.index.name = "timestamp"
    return out


def _write_parquet(df: pd.DataFrame, f: BinaryIO) -> None:
    """Serialise bars to an open binary file (a seam that tests replace to simulate a crash)."""
    table = pa.Table.from_pandas(df, preserve_index=True)
    pq.write_table(table, f)


def to_parquet(df: pd.DataFrame) -> bytes:
    """A store-shaped frame as Parquet bytes (what a BARS object holds)."""
    buf = io.BytesIO()
    _write_parquet(df, buf)
    return buf.getvalue()


_THREADED_DECODE_BYTES = 4 << 20  # bigger Parquet objects are decoded with Arrow's threads


def read_table(source: bytes | bytearray | memoryview | Path) -> pa.Table:
    """Parquet bytes or a file as an Arrow table (no pandas yet); DataError when it is unreadable.
    `ParquetFile.read` rather than `pq.read_table` (no dataset layer), and without Arrow's thread
    pool for a small object (a partition: 0.74 ms against 1.27 ms for a month of 1m bars), which
    is most of a partition's decode."""
    try:
        if isinstance(source, Path):
            with pa.OSFile(str(source)) as f:
                return pq.ParquetFile(f).read(use_threads=f.size() > _THREADED_DECODE_BYTES)
        return pq.ParquetFile(pa.py_buffer(source)).read(use_threads=len(source) > _THREADED_DECODE_BYTES)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"stored bars are unreadable: {e}") from e


def from_tables(tables: list[pa.Table], *, ordered: bool = False) -> pd.DataFrame:
    """Arrow tables of bars as ONE store-shaped frame: concatenated as Arrow, converted to pandas and
    normalised once (not per table). `ordered`: the caller knows the tables are each sorted, disjoint
    and in time order (partitions listed by a manifest), so no re-sort or dedupe is needed."""
    if not tables:
        return empty_frame()
    try:
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        df = normalize_frame(table.to_pandas())
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"stored bars are unreadable: {e}") from e
    if not ordered and len(tables) > 1:
        df = df[~df.index.duplicated(keep="last")].sort_index()
    return df


def from_parquet(source: bytes | bytearray | memoryview | Path) -> pd.DataFrame:
    """Parquet bytes or a file back into a store-shaped frame; DataError when it is not one."""
    return from_tables([read_table(source)])


def series_meta(symbol: str, timeframe: str, df: pd.DataFrame, source: str, simulated: bool) -> SeriesMeta:
    return SeriesMeta(
        symbol=symbol, timeframe=timeframe, source=source, simulated=simulated,
        start=df.index[0].isoformat() if len(df) else None, end=df.index[-1].isoformat() if len(df) else None,
        rows=len(df), updated_at=datetime.now(UTC).isoformat())


def merge_frames(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """old + new, one bar per timestamp (the newest wins), sorted."""
    merged = pd.concat([old, new]) if len(old) else new
    return merged[~merged.index.duplicated(keep="last")].sort_index()


def merge_parts(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Partitions read in time order (disjoint, each sorted) as one frame."""
    if not frames:
        return empty_frame()
    return frames[0] if len(frames) == 1 else pd.concat(frames)


def check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValidationError(f"unknown data source {source!r}", hint=f"one of {', '.join(SOURCES)}")


def merged_source(stored: str | None, source: str) -> str:
    return source if stored in (None, source) else "mixed"


Bound: TypeAlias = datetime | pd.Timestamp | str | None  # a range bound, as the CLI and commands give it


@runtime_checkable
class SeriesStore(Protocol):
    """The store a DataLoadingJob loads into: what is stored (its range, its bars, its metadata) and a
    merge of fetched bars into it. Synchronous: the job runs each call on a worker thread, so a merge
    of a large series never holds up the event loop that carries cancels."""

    def covered_range(self, symbol: str, tf: Timeframe | str) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        """(first bar start, last bar start) of the stored series, or None when nothing is stored."""
        ...

    def read(self, symbol: str, tf: Timeframe | str, start: Bound = None, end: Bound = None) -> pd.DataFrame:
        """Stored bars with start <= timestamp < end (either bound optional); an empty frame if none."""
        ...

    def metadata(self, symbol: str, tf: Timeframe | str) -> SeriesMeta | None:
        ...

    def merge(self, symbol: str, tf: Timeframe | str, df: pd.DataFrame, source: str,
              simulated: bool | None = None) -> int:
        """Merge bars into the series (the newest wins); returns how many timestamps are new."""
        ...


class SeriesBuffer:
    """One series in memory, a SeriesStore (the symbol/timeframe arguments are this series'), backed
    by BARS: the job-manager loads it from there and its SeriesWriter stores snapshots of it back.
    Thread-safe: the job merges segments from worker threads. `version` counts merges that changed something, so a
    writer knows whether a snapshot is newer than what it stored."""

    # Fold pending segments in when there are this many (each merge only checks which timestamps are new).
    _FOLD_FRAMES, _FOLD_ROWS = 32, 250_000

    def __init__(self, symbol: str, timeframe: str, df: pd.DataFrame | None = None,
                 meta: SeriesMeta | None = None) -> None:
        self.symbol, self.timeframe = symbol, timeframe
        self._base = normalize_frame(df) if df is not None else empty_frame()
        self._pending: list[pd.DataFrame] = []
        self._pending_rows = 0
        self._source: str | None = meta.source if meta is not None and len(self._base) else None
        self._simulated = bool(meta.simulated) if meta is not None else False
        self._lock = threading.Lock()
        self.version = 0
        self.merges = 0
        self._touched: dict[str, int] = {}  # partition key -> the version that last merged bars into it

    def merge(self, symbol: str, tf: Timeframe | str, df: pd.DataFrame, source: str,
              simulated: bool | None = None) -> int:
        """Merge bars (the newest wins); returns how many timestamps are new. Same rules as DataStore."""
        check_source(source)
        new = normalize_frame(df)
        new = new[~new.index.duplicated(keep="last")]
        with self._lock:
            self.merges += 1
            if new.empty and self._source is not None:
                return 0
            ts = new.index.asi8
            known = _members(self._base.index.asi8, ts)
            for frame in self._pending:
                known |= np.isin(ts, frame.index.asi8)
            self._pending.append(new)
            self._pending_rows += len(new)
            self._source = merged_source(self._source, source)
            self._simulated = self._simulated or (source == "sim" if simulated is None else simulated)
            self.version += 1
            for key in keys_of(pd.DatetimeIndex(new.index), self.timeframe):
                self._touched[key] = self.version
            if len(self._pending) >= self._FOLD_FRAMES or self._pending_rows >= self._FOLD_ROWS:
                self._fold()
            return int((~known).sum())

    def touched_since(self, version: int) -> set[str]:
        """The partition keys (ktrdr.data.partitions) merges after `version` put bars into: what a
        write of a snapshot newer than `version` rewrites."""
        with self._lock:
            return {k for k, v in self._touched.items() if v > version}

    def _fold(self) -> pd.DataFrame:
        if self._pending:
            self._base = merge_frames(self._base, pd.concat(self._pending) if len(self._pending) > 1
                                      else self._pending[0])
            self._pending, self._pending_rows = [], 0
        return self._base

    def frame(self) -> pd.DataFrame:
        with self._lock:
            return self._fold()

    def snapshot(self) -> tuple[pd.DataFrame, SeriesMeta | None, int]:
        """(every bar, its metadata, the version they are of), consistent with each other."""
        with self._lock:
            df = self._fold()
            return df, self._meta(df), self.version

    def _meta(self, df: pd.DataFrame) -> SeriesMeta | None:
        if self._source is None:
            return None
        return series_meta(self.symbol, self.timeframe, df, self._source, self._simulated)

    def read(self, symbol: str, tf: Timeframe | str, start: Bound = None, end: Bound = None) -> pd.DataFrame:
        return slice_bars(self.frame(), start, end)

    def metadata(self, symbol: str, tf: Timeframe | str) -> SeriesMeta | None:
        with self._lock:
            return self._meta(self._fold())

    def covered_range(self, symbol: str, tf: Timeframe | str) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        df = self.frame()
        return (df.index[0], df.index[-1]) if len(df) else None


def _members(sorted_i8: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Which of `ts` are in the sorted array (binary search: no hash table of the whole series)."""
    if not len(sorted_i8):
        return np.zeros(len(ts), dtype=bool)
    pos = np.searchsorted(sorted_i8, ts).clip(max=len(sorted_i8) - 1)
    return sorted_i8[pos] == ts


def slice_bars(df: pd.DataFrame, start: datetime | pd.Timestamp | str | None,
           end: datetime | pd.Timestamp | str | None) -> pd.DataFrame:
    if start is not None:
        df = df[df.index >= to_utc(start, "start")]
    if end is not None:
        df = df[df.index < to_utc(end, "end")]
    return df


_DIGEST_RE = re.compile(r"^SHA-256=[A-Za-z0-9_-]{43}=?$", re.IGNORECASE)
_PART_PREFIX = ".part."  # a download in progress: `.part.<writer pid>.<random>.tmp`
log = logging.getLogger(__name__)


def digest_hex(digest: str) -> str | None:
    """`SHA-256=<base64url>` (an object's digest) as 64 hex digits, or None when it is not one: only
    this ever names a cache file."""
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        return None
    try:
        raw = base64.urlsafe_b64decode(digest.split("=", 1)[1] + "=" * (-len(digest.split("=", 1)[1]) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


def _writer_gone(name: str, mtime: float) -> bool:
    """Whether the process that named a temp file `.part.<pid>.<...>` is no longer running (a file
    named otherwise, from before pids were in the name, counts once it is an hour old)."""
    pid_text = name[len(_PART_PREFIX):].split(".", 1)[0]
    if not pid_text.isdigit():
        return mtime < time.time() - 3600
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # someone else's live process
    return False


class DigestCache:
    """Copies of stored objects keyed by their SHA-256: `<root>/<hex><suffix>`. A file appears only
    complete (temp file + rename) and only after its digest was checked; a hit refreshes its mtime.
    Bounded twice: the least recently used files go first when the folder outgrows `max_bytes` or
    when its disk has less than `min_free` bytes free (then a new file is not cached at all rather
    than fill the disk that the server's store may share). A write that fails (a full disk) leaves
    no temp file, and temp files whose writer died are swept (`sweep`, also at each eviction). Never
    the reason a read or a write fails: a file it cannot write is only a cache miss."""

    SUFFIXES = (".parquet",)

    def __init__(self, root: Path, max_bytes: int = CACHE_MAX_BYTES, min_free: int = 0) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.min_free = min_free

    def path(self, digest: str, suffix: str = ".parquet") -> Path | None:
        key = digest_hex(digest)
        if key is None or suffix not in self.SUFFIXES:
            return None
        return self.root / f"{key}{suffix}"

    def lookup(self, digest: str, suffix: str = ".parquet") -> Path | None:
        path = self.path(digest, suffix)
        if path is None:
            return None
        try:
            os.utime(path)  # "recently used"
        except FileNotFoundError:
            return None
        return path

    def temp(self) -> tuple[BinaryIO, Path]:
        """An open temp file in the cache folder (same filesystem: the rename is atomic), named with
        this process's pid so a sweep can tell a live download from one left by a killed process."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f"{_PART_PREFIX}{os.getpid()}.", suffix=".tmp")
        return os.fdopen(fd, "wb"), Path(tmp)

    def reserve(self, size: int) -> bool:
        """Make room for a new file of `size` bytes (evicting the least recently used); False when
        even an empty cache would leave less than `min_free` on the disk: then do not cache it."""
        if size > self.max_bytes:
            return False
        self.evict(need=size)
        try:
            return disk.free_bytes(self.root) - size >= self.min_free
        except OSError:
            return False

    def commit(self, tmp: Path, digest: str, suffix: str = ".parquet") -> Path:
        path = self.path(digest, suffix)
        if path is None:
            tmp.unlink(missing_ok=True)
            raise DataError(f"not a cacheable digest: {str(digest)[:80]!r}")
        os.replace(tmp, path)
        self.evict(keep=path)
        return path

    def put(self, digest: str, data: bytes | bytearray | memoryview, suffix: str = ".parquet") -> Path | None:
        """Cache bytes whose digest the caller has checked; None when the digest cannot name a file,
        there is no room for it, or the write failed (logged: the caller goes on without the copy)."""
        if self.path(digest, suffix) is None or not self.reserve(len(data)):
            return None
        tmp: Path | None = None
        try:
            f, tmp = self.temp()
            with f:
                f.write(data)
            return self.commit(tmp, digest, suffix)
        except OSError as exc:
            log.warning("not cached (%s): %s", "disk full" if disk.is_no_space(exc) else "write failed", exc)
            return None
        finally:
            if tmp is not None and tmp.exists():
                tmp.unlink(missing_ok=True)

    def sweep(self) -> list[Path]:
        """Remove temp files whose writer is no longer running (killed mid-download)."""
        removed = []
        with contextlib.suppress(FileNotFoundError):
            for p in self.root.iterdir():
                if not p.name.startswith(_PART_PREFIX):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if _writer_gone(p.name, p.stat().st_mtime):
                        p.unlink(missing_ok=True)
                        removed.append(p)
        return removed

    def evict(self, keep: Path | None = None, need: int = 0) -> list[Path]:
        """Remove least recently used files until the folder fits `max_bytes` (with `need` more) and
        its disk keeps `min_free` (plus `need`); dead writers' temp files go first."""
        self.sweep()
        entries: list[tuple[float, int, Path]] = []
        with contextlib.suppress(FileNotFoundError):
            for p in self.root.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if p.suffix in self.SUFFIXES and not p.name.startswith("."):
                        st = p.stat()
                        entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        removed: list[Path] = []
        for _, size, p in sorted(entries):
            if total + need <= self.max_bytes and self._free() - need >= self.min_free:
                break
            if p == keep:
                continue
            p.unlink(missing_ok=True)
            removed.append(p)
            total -= size
        return removed

    def _free(self) -> int:
        if not self.min_free:
            return 1 << 62  # no floor asked for: no statvfs per file
        try:
            return disk.free_bytes(self.root)
        except OSError:
            return 0


class DataStore:
    """A SeriesStore on local disk (see the module's docstring)."""

    def __init__(self, home: Path | str) -> None:
        self.home = Path(home)
        self.root = self.home / "data"

    # --- paths ------------------------------------------------------------------------------------
    def _key(self, symbol: str, tf: Timeframe | str) -> tuple[str, str]:
        return normalize_symbol(symbol), parse_timeframe(tf)

    def _paths(self, symbol: str, tf: Timeframe | str) -> tuple[Path, Path, Path]:
        sym, name = self._key(symbol, tf)
        d = self.root / sym
        return d / f"{name}.parquet", d / f"{name}.meta.json", d / f"{name}.lock"

    @contextlib.contextmanager
    def lock(self, symbol: str, tf: Timeframe | str) -> Iterator[None]:
        """Exclusive lock on one series across threads and processes (each call opens its own fd)."""
        _, _, lock_path = self._paths(symbol, tf)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # --- reading ----------------------------------------------------------------------------------
    def _read_all(self, symbol: str, tf: Timeframe | str) -> pd.DataFrame:
        data_path, _, _ = self._paths(symbol, tf)
        if not data_path.exists():
            return empty_frame()
        try:
            df = pq.read_table(data_path).to_pandas()
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"stored series {data_path} is unreadable: {e}") from e
        return normalize_frame(df)

    def read(
        self,
        symbol: str,
        tf: Timeframe | str,
        start: datetime | pd.Timestamp | str | None = None,
        end: datetime | pd.Timestamp | str | None = None,
    ) -> pd.DataFrame:
        """Stored bars with start <= timestamp < end (either bound optional); empty frame if none."""
        return slice_bars(self._read_all(symbol, tf), start, end)

    def metadata(self, symbol: str, tf: Timeframe | str) -> SeriesMeta | None:
        _, meta_path, _ = self._paths(symbol, tf)
        if not meta_path.exists():
            return None
        try:
            return msgspec.json.decode(meta_path.read_bytes(), type=SeriesMeta)
        except (OSError, msgspec.DecodeError) as e:
            raise DataError(f"metadata {meta_path} is unreadable: {e}") from e

    def list_series(self) -> list[SeriesMeta]:
        """Metadata of every stored series, sorted by symbol then timeframe."""
        out: list[SeriesMeta] = []
        if not self.root.exists():
            return out
        for meta_path in sorted(self.root.glob("*/*.meta.json")):
            meta = msgspec.json.decode(meta_path.read_bytes(), type=SeriesMeta)
            out.append(meta)
        return out

    def covered_range(self, symbol: str, tf: Timeframe | str) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        """(first bar start, last bar start) of the stored series, or None when nothing is stored."""
        df = self._read_all(symbol, tf)
        if df.empty:
            return None
        return df.index[0], df.index[-1]

    # --- writing ----------------------------------------------------------------------------------
    def _store(self, symbol: str, tf: Timeframe | str, df: pd.DataFrame, source: str, simulated: bool) -> None:
        """Atomically replace data then metadata; the caller holds the lock."""
        sym, name = self._key(symbol, tf)
        data_path, meta_path, _ = self._paths(symbol, tf)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(data_path, lambda f: _write_parquet(df, f))
        meta = series_meta(sym, name, df, source, simulated)
        payload = msgspec.json.format(msgspec.json.encode(meta))
        atomic_write(meta_path, lambda f: f.write(payload))

    def write(
        self,
        symbol: str,
        tf: Timeframe | str,
        df: pd.DataFrame,
        source: str,
        simulated: bool | None = None,
    ) -> int:
        """Replace the stored series with `df` (deduplicated keeping the last, sorted). Returns rows.

        `simulated` defaults to source == "sim"."""
        check_source(source)
        bars = normalize_frame(df)
        bars = bars[~bars.index.duplicated(keep="last")].sort_index()
        with self.lock(symbol, tf):
            self._store(symbol, tf, bars, source, source == "sim" if simulated is None else simulated)
        return len(bars)

    def merge(
        self,
        symbol: str,
        tf: Timeframe | str,
        df: pd.DataFrame,
        source: str,
        simulated: bool | None = None,
    ) -> int:
        """Merge `df` into the stored series; returns how many bars were added (new timestamps).

        Bars with an already stored timestamp replace the stored one (the newest fetch wins). The
        series' source becomes "mixed" when it differs from what is stored; `simulated` sticks."""
        check_source(source)
        sim = source == "sim" if simulated is None else simulated
        new = normalize_frame(df)
        with self.lock(symbol, tf):
            old = self._read_all(symbol, tf)
            meta = self.metadata(symbol, tf) if len(old) else None
            if new.empty and meta is not None:
                return 0
            merged = merge_frames(old, new)
            if meta is not None:
                source = merged_source(meta.source, source)
                sim = sim or meta.simulated
            self._store(symbol, tf, merged, source, sim)
            return len(merged) - len(old)

    def export_csv(
        self,
        symbol: str,
        tf: Timeframe | str,
        path: Path | str,
        start: datetime | pd.Timestamp | str | None = None,
        end: datetime | pd.Timestamp | str | None = None,
    ) -> int:
        """Write stored bars (start <= t < end) to a CSV that import_csv reads back. Returns rows."""
        return write_csv(self.read(symbol, tf, start, end), path)


def write_csv(df: pd.DataFrame, path: Path | str) -> int:
    """Write bars to a CSV that import_csv reads back (atomically: temp file + rename). Returns rows."""
    out = df.copy()
    out.index = out.index.strftime("%Y-%m-%dT%H:%M:%SZ")
    out.index.name = "timestamp"
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = out.to_csv().encode()  # full float precision: a round trip is exact
    atomic_write(target, lambda f: f.write(text))
    return len(df)
