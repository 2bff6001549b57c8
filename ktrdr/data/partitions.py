"""A BARS series in partitions: one Parquet object per (symbol, timeframe, period) and a small JSON
manifest that lists them, the manifest written last with compare-and-set. Pure: no NATS here (the
adapter is ktrdr.data.bars_store).

Periods, chosen so a partition stays a few MB at most (10 years of 1m bars: ~2,000 hours of trading
a year, a month of 1m bars is ~8,000-30,000 rows, 0.3-1.3 MB of Parquet):
- under an hour (1m..30m): a calendar month (`2024-03`)
- an hour up to a day (1h, 4h): a calendar year (`2024`)
- a day and over: the whole series (`all`)

Names: `<SYMBOL>/<TF>` is the manifest (the series' object, as before, so a whole-series object
written the old way sits at the same name and is replaced by the first partitioned write: the
migration); a partition is `<SYMBOL>/<TF>/<key>.<generation>.<token>`, a fresh name per write, so a
reader of one manifest reads exactly the partitions it lists (each checked against its digest), a
partition is never rewritten in place, and the replaced ones are removed only after the manifest
moved. A writer killed before its manifest put leaves the old manifest and its partitions as they
were; the names it wrote (generation newer than the manifest's) are unreferenced and swept later.
"""

from __future__ import annotations

import re
import secrets
from typing import Annotated, Literal

import msgspec
import numpy as np
import pandas as pd

from events.bounds import (
    MAX_GENERATION_DIGITS,
    MAX_MANIFEST_BYTES,
    MAX_PARTITIONS,
    MAX_RUNS_PER_PARTITION,
    PARTITION_KEY_PATTERN,
    PARTITION_TAIL_PATTERN,
)
from ktrdr.data.timeframes import parse_timeframe
from ktrdr.errors import DataError

__all__ = ["MANIFEST_HEADER", "MAX_MANIFEST_BYTES", "MAX_PARTITIONS", "Manifest", "PartitionEntry", "chunks",
           "decode_manifest", "entry", "key_range", "keys_of", "overlapping", "parse_partition_name", "partition_name",
           "period_of", "runs_of", "split", "stored_mask"]

Period = Literal["month", "year", "all"]
MANIFEST_HEADER = "Ktrdr-Partitions"  # present (value "1") on a manifest, absent on an old whole-series object
_KEY_RE = re.compile(rf"^{PARTITION_KEY_PATTERN}$")
_NAME_TAIL_RE = re.compile(PARTITION_TAIL_PATTERN)

Key = Annotated[str, msgspec.Meta(pattern=_KEY_RE.pattern)]
Rows = Annotated[int, msgspec.Meta(ge=0, le=1 << 40)]
EpochS = Annotated[int, msgspec.Meta(ge=-(1 << 40), le=1 << 40)]
Run = tuple[EpochS, EpochS]  # (first, last) bar start of a run of bars one timeframe apart, epoch seconds


class PartitionEntry(msgspec.Struct, kw_only=True, frozen=True):
    key: Key
    name: Annotated[str, msgspec.Meta(max_length=200)]
    rows: Rows
    start: Annotated[str, msgspec.Meta(max_length=40)]  # ISO UTC of the first bar start
    end: Annotated[str, msgspec.Meta(max_length=40)]  # ISO UTC of the last bar start
    digest: Annotated[str, msgspec.Meta(max_length=100)]  # the partition object's SHA-256
    size: Rows
    # The bars it holds as runs (runs_of): what a load plans its gaps from without reading it. None:
    # not known (a manifest written before runs existed, or a partition too fragmented to list).
    runs: Annotated[list[Run], msgspec.Meta(max_length=MAX_RUNS_PER_PARTITION)] | None = None
    # The object's chunk id when it is one chunk: a reader gets those bytes directly (one request, the
    # digest above checked) rather than stat first. None: stat it (older manifests, bigger objects).
    nuid: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9]{1,64}$")] | None = None


class Manifest(msgspec.Struct, kw_only=True, frozen=True):
    format: Literal[1] = 1
    generation: Annotated[int, msgspec.Meta(ge=0, le=10**MAX_GENERATION_DIGITS - 1)]
    partitions: Annotated[list[PartitionEntry], msgspec.Meta(max_length=MAX_PARTITIONS)]


def period_of(timeframe: str) -> Period:
    seconds = parse_timeframe(timeframe).seconds
    return "month" if seconds < 3600 else "year" if seconds < 86400 else "all"


def _buckets(index: pd.DatetimeIndex, period: Period) -> np.ndarray:
    values = index.tz_convert("UTC").tz_localize(None).values if index.tz is not None else index.values
    return values.astype("datetime64[M]" if period == "month" else "datetime64[Y]")


def _key(bucket: np.datetime64, period: Period) -> str:
    text = str(bucket)
    return text[:7] if period == "month" else text[:4]


def keys_of(index: pd.DatetimeIndex, timeframe: str) -> set[str]:
    """The partition keys that bars at these timestamps fall in."""
    if not len(index):
        return set()
    period = period_of(timeframe)
    if period == "all":
        return {"all"}
    return {_key(b, period) for b in np.unique(_buckets(index, period))}


def split(df: pd.DataFrame, timeframe: str) -> dict[str, pd.DataFrame]:
    """A sorted store-shaped frame cut into its partitions, key -> frame (views, no copies)."""
    if not len(df):
        return {}
    period = period_of(timeframe)
    if period == "all":
        return {"all": df}
    buckets = _buckets(pd.DatetimeIndex(df.index), period)
    uniq, first = np.unique(buckets, return_index=True)
    bounds = [*first.tolist(), len(df)]
    return {_key(b, period): df.iloc[bounds[i]:bounds[i + 1]] for i, b in enumerate(uniq)}


def key_range(key: str) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """[start, end) a partition covers (None, None for `all`)."""
    if key == "all":
        return None, None
    start = pd.Timestamp(key + ("-01" if len(key) == 7 else "-01-01"), tz="UTC")
    end = start + (pd.DateOffset(months=1) if len(key) == 7 else pd.DateOffset(years=1))
    return start, end


def overlapping(manifest: Manifest, start: pd.Timestamp | None, end: pd.Timestamp | None) -> list[PartitionEntry]:
    """The entries a read of start <= t < end needs (by their first/last bar), in time order."""
    out = []
    for e in manifest.partitions:
        if start is not None and pd.Timestamp(e.end) < start:
            continue
        if end is not None and pd.Timestamp(e.start) >= end:
            continue
        out.append(e)
    return sorted(out, key=lambda e: e.start)


def chunks(timeframe: str, start: pd.Timestamp, end: pd.Timestamp) -> list[tuple[str, pd.Timestamp, pd.Timestamp]]:
    """[start, end) cut at partition boundaries: (key, chunk start, chunk end) in time order."""
    if start >= end:
        return []
    period = period_of(timeframe)
    if period == "all":
        return [("all", start, end)]
    out = []
    key = _key(np.datetime64(start.tz_convert("UTC").tz_localize(None), "M" if period == "month" else "Y"), period)
    while True:
        lo, hi = key_range(key)
        assert lo is not None and hi is not None
        if lo >= end:
            return out
        out.append((key, max(lo, start), min(hi, end)))
        key = hi.strftime("%Y-%m" if period == "month" else "%Y")


def partition_name(series: str, key: str, generation: int) -> str:
    """A fresh object name for a partition of `series` (a checked `SYMBOL/TF`) written at `generation`."""
    if not _KEY_RE.match(key):
        raise DataError(f"not a partition key: {key!r}")
    return f"{series}/{key}.{generation}.{secrets.token_hex(4)}"


def parse_partition_name(series: str, name: str) -> tuple[str, int] | None:
    """(key, generation) of a partition object of `series`, or None when `name` is not one."""
    if not name.startswith(series + "/"):
        return None
    m = _NAME_TAIL_RE.match(name[len(series) + 1:])
    return (m.group(1), int(m.group(2))) if m else None


def decode_manifest(series: str, raw: bytes | bytearray) -> Manifest:
    """A manifest read from BARS, validated: every entry a partition of this series, keys unique."""
    try:
        man = msgspec.json.decode(bytes(raw), type=Manifest)
    except msgspec.ValidationError as exc:
        raise DataError(f"BARS/{series}: its manifest is invalid: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise DataError(f"BARS/{series}: its manifest is unreadable: {exc}") from exc
    keys = [e.key for e in man.partitions]
    if len(set(keys)) != len(keys):
        raise DataError(f"BARS/{series}: its manifest lists a partition twice")
    for e in man.partitions:
        parsed = parse_partition_name(series, e.name)
        if parsed is None or parsed[0] != e.key or parsed[1] > man.generation:
            raise DataError(f"BARS/{series}: its manifest names an object that is not one of its partitions")
        runs = e.runs or []
        if any(a > b for a, b in runs) or any(runs[i][1] >= runs[i + 1][0] for i in range(len(runs) - 1)):
            raise DataError(f"BARS/{series}: its manifest lists the bars of {e.key} out of order")
    return man


def runs_of(index: pd.DatetimeIndex, timeframe: str) -> list[tuple[int, int]] | None:
    """A sorted, deduplicated index as runs of bars one timeframe apart: [(first, last)] in epoch
    seconds. Exact: a bar start is in the index iff it is `first + k * step` inside a run. None when
    there are more than MAX_RUNS_PER_PARTITION runs or a bar start is not a whole second."""
    if not len(index):
        return []
    ns = pd.DatetimeIndex(index).as_unit("ns").asi8
    if (ns % 1_000_000_000).any():
        return None
    sec = ns // 1_000_000_000
    breaks = np.flatnonzero(np.diff(sec) != parse_timeframe(timeframe).seconds)
    if len(breaks) >= MAX_RUNS_PER_PARTITION:
        return None
    firsts = np.concatenate(([sec[0]], sec[breaks + 1]))
    lasts = np.concatenate((sec[breaks], [sec[-1]]))
    return [(int(a), int(b)) for a, b in zip(firsts, lasts, strict=True)]


def stored_mask(runs: list[tuple[int, int]], timeframe: str, wanted_ns: np.ndarray) -> np.ndarray:
    """Which of `wanted_ns` (bar starts, int64 ns) runs_of says are stored."""
    if not runs or not len(wanted_ns):
        return np.zeros(len(wanted_ns), dtype=bool)
    step = parse_timeframe(timeframe).seconds * 1_000_000_000
    firsts = np.array([a for a, _ in runs], dtype=np.int64) * 1_000_000_000
    lasts = np.array([b for _, b in runs], dtype=np.int64) * 1_000_000_000
    i = np.searchsorted(firsts, wanted_ns, side="right") - 1
    ok = i >= 0
    j = i.clip(min=0)
    return ok & (wanted_ns <= lasts[j]) & ((wanted_ns - firsts[j]) % step == 0)


def entry(key: str, name: str, df: pd.DataFrame, digest: str, size: int, timeframe: str | None = None,
          nuid: str | None = None) -> PartitionEntry:
    """The manifest entry of a partition just written (with its runs when `timeframe` is given)."""
    return PartitionEntry(key=key, name=name, rows=len(df), start=df.index[0].isoformat(),
                          end=df.index[-1].isoformat(), digest=digest, size=size,
                          runs=runs_of(pd.DatetimeIndex(df.index), timeframe) if timeframe else None, nuid=nuid)
