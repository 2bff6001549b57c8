"""The BARS bucket as a store of series, each in partitions (ktrdr.data.partitions: one Parquet object
per symbol x timeframe x period, a month for 1m) listed by a manifest at `<SYMBOL>/<TF>` with the
SeriesMeta in its header `Ktrdr-Series`; partitions are read through this host's DigestCache, so
each is cached under its own digest and an append invalidates only the partitions it rewrote.

`BarStore` reads a series (or only the partitions a window needs), writes one with compare-and-set on
the manifest (only if it is still the one that was read: the partitions first under fresh names, the
manifest last, the replaced partitions deleted after it moved) and merges bars into one (retried on a
concurrent write). A whole-series Parquet object written the old way at `<SYMBOL>/<TF>` is read as
before and replaced by a manifest at the first write (the migration). `SeriesWriter` is how a data
load stores what it fetched: the load merges segments into an in-memory SeriesBuffer, and the writer
stores snapshots of it every so often while the load runs and once at the end whatever the outcome,
each write putting only the partitions the merges since the last one touched, merging on top of a
concurrent write rather than losing it. Object names are built from a checked symbol and timeframe
only (`bars_name`) and generated partition keys. This is the data domain's NATS adapter; the bytes go
through ktrdr.transport.objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import pandas as pd
from nats.js import JetStreamContext

from ktrdr.commands import check_symbol, check_timeframe
from ktrdr.data.calendar import to_utc
from ktrdr.data.partitions import (
    MANIFEST_HEADER,
    MAX_MANIFEST_BYTES,
    Manifest,
    PartitionEntry,
    decode_manifest,
    entry,
    overlapping,
    parse_partition_name,
    partition_name,
    split,
)
from ktrdr.data.store import (
    SOURCES,
    DigestCache,
    SeriesBuffer,
    SeriesMeta,
    empty_frame,
    from_parquet,
    merge_parts,
    slice_bars,
    to_parquet,
)
from ktrdr.errors import DataError, ValidationError
from ktrdr.transport import objects
from ktrdr.transport.objects import BARS, ObjectConflict, Stored

MAX_SERIES_BYTES = 4 << 30
SERIES_HEADER = "Ktrdr-Series"
READ_CONCURRENCY = 8  # partitions fetched at once by one read (each a few MB at most)
_Metas = list[SeriesMeta]  # for annotations inside BarStore, whose `list` method shadows the builtin


def bars_name(symbol: str, timeframe: str) -> str:
    """`AAPL/1h`: a series' object name, from a checked symbol and timeframe only."""
    return f"{check_symbol(symbol)}/{check_timeframe(timeframe)}"


@dataclass
class StoredSeries:
    """A series (or the partitions of it a range needs) as read from BARS."""

    df: pd.DataFrame
    meta: SeriesMeta | None
    stored: Stored | None  # what a conditional write of this series expects (None: nothing stored)
    manifest: Manifest | None = None  # None: nothing stored, or a whole-series object written the old way


class BarStore:
    """Series in BARS, read through this host's DigestCache (when given). `partitioned=False` writes
    whole-series objects the old way (kept for the migration test and the benchmark's baseline)."""

    def __init__(self, js: JetStreamContext, cache: DigestCache | None = None, *, partitioned: bool = True) -> None:
        self.js, self.cache, self.partitioned = js, cache, partitioned
        self.bytes_written = 0  # Parquet bytes put (partitions, or whole series), for benchmarks

    @staticmethod
    def _meta(st: Stored, name: str) -> SeriesMeta:
        raw = st.header(SERIES_HEADER)
        try:
            meta = msgspec.json.decode(raw or b"", type=SeriesMeta)
        except msgspec.DecodeError as exc:
            raise DataError(f"BARS/{name}: its metadata is unreadable: {exc}") from exc
        if f"{meta.symbol}/{meta.timeframe}" != name or meta.source not in SOURCES or meta.rows < 0:
            raise DataError(f"BARS/{name}: its metadata names another series or an unknown source")
        return msgspec.structs.replace(meta, digest=st.digest)

    async def stat(self, symbol: str, timeframe: str) -> tuple[SeriesMeta, Stored] | None:
        name = bars_name(symbol, timeframe)
        st = await objects.stat(self.js, BARS, name)
        return None if st is None or st.deleted else (self._meta(st, name), st)

    async def metadata(self, symbol: str, timeframe: str) -> SeriesMeta | None:
        found = await self.stat(symbol, timeframe)
        return found[0] if found else None

    async def load(self, symbol: str, timeframe: str, start: datetime | pd.Timestamp | str | None = None,
                   end: datetime | pd.Timestamp | str | None = None) -> StoredSeries:
        """The stored series (an empty frame when none), only its bars with start <= t < end when a
        bound is given (reading only the partitions they fall in), and what a conditional write expects."""
        name = bars_name(symbol, timeframe)
        lo = to_utc(start, "start") if start is not None else None
        hi = to_utc(end, "end") if end is not None else None
        for attempt in range(5):
            st = await objects.stat(self.js, BARS, name)
            if st is None or st.deleted:
                return StoredSeries(empty_frame(), None, st)
            try:
                meta = self._meta(st, name)
                if st.header(MANIFEST_HEADER) is None:  # written the old way: one whole-series object
                    return StoredSeries(slice_bars(await self._frame(st), lo, hi), meta, st)
                data = await objects.fetch(self.js, st, max_bytes=MAX_MANIFEST_BYTES)
                assert data is not None
                manifest = decode_manifest(name, data)
                sem = asyncio.Semaphore(READ_CONCURRENCY)
                frames = list(await asyncio.gather(*(self._partition(e, sem) for e in overlapping(manifest, lo, hi))))
                df = merge_parts(frames)
                return StoredSeries(slice_bars(df, lo, hi) if lo is not None or hi is not None else df,
                                    meta, st, manifest)
            except DataError:
                if attempt == 4:
                    raise  # replaced while read: read the newer one
        raise AssertionError("unreachable")

    async def read(self, symbol: str, timeframe: str, start: datetime | None = None,
                   end: datetime | None = None) -> pd.DataFrame:
        """Stored bars with start <= t < end (either bound optional); an empty frame when none."""
        return (await self.load(symbol, timeframe, start, end)).df

    async def _partition(self, e: PartitionEntry, sem: asyncio.Semaphore) -> pd.DataFrame:
        async with sem:
            st = await objects.stat(self.js, BARS, e.name)
            if st is None or st.deleted or st.digest != e.digest:
                raise DataError(f"BARS/{e.name}: replaced while it was read")
            return await self._frame(st)

    async def _frame(self, st: Stored) -> pd.DataFrame:
        path = self.cache.lookup(st.digest) if self.cache is not None else None
        if path is not None:
            try:
                return await asyncio.to_thread(from_parquet, path)
            except DataError:
                path.unlink(missing_ok=True)  # a damaged cache file is only a cache miss
        cache = self.cache
        if cache is not None and cache.path(st.digest) is not None and await asyncio.to_thread(cache.reserve, st.size):
            tmp = None
            try:
                f, tmp = await asyncio.to_thread(cache.temp)
                with f:  # streamed to disk: memory stays at one chunk, not the whole object
                    await objects.fetch(self.js, st, into=f, max_bytes=MAX_SERIES_BYTES)
                path = await asyncio.to_thread(cache.commit, tmp, st.digest)
                return await asyncio.to_thread(from_parquet, path)
            except TimeoutError:
                raise  # the server's, not the cache's
            except OSError:
                pass  # the cache's disk is full (or failing): read into memory instead, below
            finally:
                if tmp is not None:
                    tmp.unlink(missing_ok=True)  # renamed when committed; never left behind
        data = await objects.fetch(self.js, st, max_bytes=MAX_SERIES_BYTES)
        if data is None:
            raise DataError(f"BARS/{st.name}: gone while it was read")
        return await asyncio.to_thread(from_parquet, data)

    async def write(self, df: pd.DataFrame, meta: SeriesMeta, *, replaces: Stored | None,
                    manifest: Manifest | None = None, touched: set[str] | None = None) -> Stored:
        """Store a series, only if it is still `replaces` (ObjectConflict otherwise)."""
        return (await self.write_series(df, meta, replaces=replaces, manifest=manifest, touched=touched))[0]

    async def write_series(self, df: pd.DataFrame, meta: SeriesMeta, *, replaces: Stored | None,
                           manifest: Manifest | None = None, touched: set[str] | None = None
                           ) -> tuple[Stored, Manifest | None]:
        """Store a series, only if it is still `replaces` (ObjectConflict otherwise, nothing changed
        that a reader sees). Partitioned: the partitions named in `touched` (all of them when None,
        or when `manifest`, what `replaces` lists, is not given: a migration) are put under fresh
        names, then the manifest with compare-and-set, then the partitions it replaced are deleted."""
        name = bars_name(meta.symbol, meta.timeframe)
        header = msgspec.json.encode(msgspec.structs.replace(meta, digest="")).decode()
        if not self.partitioned:
            data = await asyncio.to_thread(to_parquet, df)
            st = await objects.put(self.js, BARS, name, data, headers={SERIES_HEADER: header},
                                   conditional=True, replaces=replaces)
            self.bytes_written += len(data)
            if self.cache is not None:  # this host reads it next: no download
                await asyncio.to_thread(self.cache.put, st.digest, data)
            return st, None
        if manifest is None and replaces is not None and replaces.header(MANIFEST_HEADER) is not None:
            data = await objects.fetch(self.js, replaces, max_bytes=MAX_MANIFEST_BYTES)
            with contextlib.suppress(DataError):  # what it lists is deleted once this write is stored
                manifest, touched = decode_manifest(name, data or b""), None
        old = {e.key: e for e in manifest.partitions} if manifest is not None else {}
        generation = (manifest.generation + 1) if manifest is not None else 1
        parts = await asyncio.to_thread(split, df, meta.timeframe)
        entries: dict[str, PartitionEntry] = {}
        for key, part in parts.items():
            if key in old and touched is not None and key not in touched and old[key].rows == len(part):
                entries[key] = old[key]
                continue
            data = await asyncio.to_thread(to_parquet, part)
            pname = partition_name(name, key, generation)
            pst = await objects.put(self.js, BARS, pname, data, conditional=True, replaces=None)
            self.bytes_written += len(data)
            if self.cache is not None:
                await asyncio.to_thread(self.cache.put, pst.digest, data)
            entries[key] = entry(key, pname, part, pst.digest, len(data))
        new = Manifest(generation=generation, partitions=sorted(entries.values(), key=lambda e: e.key))
        body = msgspec.json.encode(new)
        try:
            st = await objects.put(self.js, BARS, name, body, conditional=True, replaces=replaces,
                                   headers={SERIES_HEADER: header, MANIFEST_HEADER: "1"})
        except ObjectConflict:  # (not on a timeout: that manifest may be stored, listing these)
            for e in entries.values():  # ours, listed by no manifest: gone now rather than at the sweep
                if e.key not in old or old[e.key].name != e.name:
                    with contextlib.suppress(Exception):
                        await objects.delete(self.js, BARS, e.name)
            raise
        for e in old.values():  # replaced: no manifest from now on lists them
            if entries.get(e.key) is None or entries[e.key].name != e.name:
                with contextlib.suppress(Exception):
                    await objects.delete(self.js, BARS, e.name)
        return st, new

    async def merge(self, symbol: str, timeframe: str, df: pd.DataFrame, source: str) -> tuple[int, Stored]:
        """Merge bars into the stored series (compare-and-set, retried on a concurrent write); returns
        (new timestamps, the stored object). The caller holds the series' writer lease."""
        sym, tf = bars_name(symbol, timeframe).split("/")
        for _ in range(5):
            current = await self.load(sym, tf)
            buf = SeriesBuffer(sym, tf, current.df, current.meta)
            added = await asyncio.to_thread(buf.merge, sym, tf, df, source)
            merged, meta, _ = await asyncio.to_thread(buf.snapshot)
            assert meta is not None
            try:
                return added, await self.write(merged, meta, replaces=current.stored, manifest=current.manifest,
                                               touched=buf.touched_since(0))
            except ObjectConflict:
                continue
        raise DataError(f"BARS/{sym}/{tf} keeps changing; try again")

    async def sweep_partitions(self) -> int:
        """Delete partition objects no manifest lists that are no newer than their series' manifest
        (a writer killed between its partitions and its manifest left them; one writing now writes a
        newer generation, left alone). Returns how many were deleted."""
        listed = await objects.list_objects(self.js, BARS)
        series = {st.name: st for st in listed if st.header(MANIFEST_HEADER) is not None}
        referenced: dict[str, tuple[int, set[str]]] = {}
        deleted = 0
        for st in listed:
            sname = st.name.rsplit("/", 1)[0]
            if sname not in series or st.name in series:
                continue
            parsed = parse_partition_name(sname, st.name)
            if parsed is None:
                continue
            if sname not in referenced:
                try:
                    data = await objects.fetch(self.js, series[sname], max_bytes=MAX_MANIFEST_BYTES)
                    man = decode_manifest(sname, data or b"")
                except DataError:
                    continue
                referenced[sname] = (man.generation, {e.name for e in man.partitions})
            generation, names = referenced[sname]
            if parsed[1] <= generation and st.name not in names:
                deleted += await objects.delete(self.js, BARS, st.name)
        return deleted

    async def list(self) -> _Metas:
        out = []
        for st in await objects.list_objects(self.js, BARS):
            with contextlib.suppress(DataError, ValidationError):
                out.append(self._meta(st, st.name))
        return sorted(out, key=lambda m: (m.symbol, m.timeframe))


class SeriesWriter:
    """Writes a load's SeriesBuffer to BARS: periodically while the load runs, and once at the end."""

    def __init__(self, bars: BarStore, buffer: SeriesBuffer, stored: Stored | None, *, every_s: float,
                 every_segments: int, manifest: Manifest | None = None) -> None:
        self.bars, self.buffer, self.stored, self.manifest = bars, buffer, stored, manifest
        self.every_s, self.every_segments = every_s, every_segments
        self.written_version = buffer.version
        self.writes = 0
        self.write_s = 0.0  # seconds spent writing (serialising + putting), for the result
        self._lock = asyncio.Lock()

    async def flush(self) -> None:
        async with self._lock:
            df, meta, version = await asyncio.to_thread(self.buffer.snapshot)
            if version == self.written_version or meta is None:
                return
            began = time.monotonic()
            touched: set[str] | None = self.buffer.touched_since(self.written_version)
            for _ in range(5):
                try:
                    self.stored, self.manifest = await self.bars.write_series(
                        df, meta, replaces=self.stored, manifest=self.manifest, touched=touched)
                    break
                except ObjectConflict:
                    # Written by someone outside the lease (or after we lost it): theirs, ours on top.
                    current = await self.bars.load(meta.symbol, meta.timeframe)
                    both = SeriesBuffer(meta.symbol, meta.timeframe, current.df, current.meta)
                    await asyncio.to_thread(both.merge, meta.symbol, meta.timeframe, df, meta.source, meta.simulated)
                    df, meta, _ = await asyncio.to_thread(both.snapshot)
                    assert meta is not None
                    self.stored, self.manifest, touched = current.stored, current.manifest, None
            else:
                raise ObjectConflict(f"BARS/{meta.symbol}/{meta.timeframe} keeps changing under this load")
            self.written_version = version
            self.writes += 1
            self.write_s += time.monotonic() - began

    async def _periodic(self) -> None:
        last_t, last_merges = time.monotonic(), self.buffer.merges
        while True:
            await asyncio.sleep(min(1.0, self.every_s))
            due = (self.buffer.merges - last_merges >= self.every_segments
                   or time.monotonic() - last_t >= self.every_s)
            if due and self.buffer.version != self.written_version:
                await self.flush()
                last_t, last_merges = time.monotonic(), self.buffer.merges

    @contextlib.asynccontextmanager
    async def running(self, log: Any) -> AsyncIterator[SeriesWriter]:
        task = asyncio.create_task(self._periodic())
        try:
            yield self
        except BaseException:
            await _stop(task)
            try:  # the bars are paid for: store them even though the load failed or was cancelled
                await asyncio.shield(self.flush())
            except Exception as exc:
                log.error("could not store the bars fetched before the load ended: %s", exc)
            raise
        await _stop(task)
        await asyncio.shield(self.flush())


async def _stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
