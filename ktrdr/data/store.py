"""DataStore: the local bar store, one Parquet series per (symbol, timeframe).

Layout under `home/data/{SYMBOL}/`: `{tf}.parquet` (the bars), `{tf}.meta.json` (SeriesMeta) and
`{tf}.lock` (the lock file). Every write goes to a temp file in the same directory, is fsynced and then
`os.replace`d over the old file, so a crash mid-write leaves the previous series intact. `merge` holds
an exclusive `fcntl.flock` on the lock file around read-merge-write, so concurrent merges from
coroutines (via threads), threads or processes never lose bars.

Frames everywhere: DatetimeIndex named "timestamp" (UTC, bar start), float64 columns
open, high, low, close, volume.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import msgspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ktrdr.data.calendar import normalize_symbol, to_utc
from ktrdr.data.timeframes import Timeframe, parse_timeframe
from ktrdr.errors import DataError, ValidationError

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


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not every filesystem supports opening a directory.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_parquet(df: pd.DataFrame, f: BinaryIO) -> None:
    """Serialise bars to an open binary file (a seam that tests replace to simulate a crash)."""
    table = pa.Table.from_pandas(df, preserve_index=True)
    pq.write_table(table, f)


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write via `write(fileobj)` to a temp file beside `path`, fsync, then os.replace it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


class DataStore:
    def __init__(self, home: Path | str) -> None:
        self.home = Path(home)
        self.root = self.home / "data"

    # --- paths ------------------------------------------------------------------------------------
    def _key(self, symbol: str, tf: Timeframe | str) -> tuple[str, str]:
        return normalize_symbol(symbol), parse_timeframe(tf).name

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
        df = self._read_all(symbol, tf)
        if start is not None:
            df = df[df.index >= to_utc(start, "start")]
        if end is not None:
            df = df[df.index < to_utc(end, "end")]
        return df

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
        _atomic_write(data_path, lambda f: _write_parquet(df, f))
        meta = SeriesMeta(
            symbol=sym,
            timeframe=name,
            source=source,
            simulated=simulated,
            start=df.index[0].isoformat() if len(df) else None,
            end=df.index[-1].isoformat() if len(df) else None,
            rows=len(df),
            updated_at=datetime.now(UTC).isoformat(),
        )
        payload = msgspec.json.format(msgspec.json.encode(meta))
        _atomic_write(meta_path, lambda f: f.write(payload))

    @staticmethod
    def _check_source(source: str) -> None:
        if source not in SOURCES:
            raise ValidationError(f"unknown data source {source!r}", hint=f"one of {', '.join(SOURCES)}")

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
        self._check_source(source)
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
        self._check_source(source)
        sim = source == "sim" if simulated is None else simulated
        new = normalize_frame(df)
        with self.lock(symbol, tf):
            old = self._read_all(symbol, tf)
            meta = self.metadata(symbol, tf) if len(old) else None
            if new.empty and meta is not None:
                return 0
            merged = pd.concat([old, new]) if len(old) else new
            merged = merged[~merged.index.duplicated(keep="last")].sort_index()
            if meta is not None:
                source = source if meta.source == source else "mixed"
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
        df = self.read(symbol, tf, start, end)
        out = df.copy()
        out.index = out.index.strftime("%Y-%m-%dT%H:%M:%SZ")
        out.index.name = "timestamp"
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = out.to_csv().encode()  # full float precision: a round trip is exact
        _atomic_write(target, lambda f: f.write(text))
        return len(df)
