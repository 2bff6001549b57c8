"""The BARS bucket as a store of series, each in partitions (ktrdr.data.partitions: one Parquet object
per symbol x timeframe x period, a month for 1m) listed by a manifest at `<SYMBOL>/<TF>` with the
SeriesMeta in its header `Ktrdr-Series`; partitions are read through this host's DigestCache, so
each is cached under its own digest and an append invalidates only the partitions it rewrote.

`BarStore` reads a series (or only the partitions a window needs), writes one with compare-and-set on
the manifest (only if it is still the one that was read: the partitions first under fresh names, the
manifest last, the replaced partitions deleted after it moved) and merges bars into one (retried on a
concurrent write). A whole-series Parquet object written the old way at `<SYMBOL>/<TF>` is read as
before and replaced by a manifest at the first write (the migration: `open_window` does it before a
load, the old object's one whole read). `SeriesWriter` is how a data load stores what it fetched: the
load merges segments into a SeriesWindow (ktrdr.data.window: the manifest, and in memory only the
partitions its segments touched, read on first touch through `partition_reader`), and the writer
stores those every so often while the load runs and once at the end whatever the outcome, with the
manifest, after which they leave memory; a lost compare-and-set puts them on top of the newer series
rather than losing it. Whole reads fetch partitions concurrently (one direct get each when the
manifest gives its chunk id), decode each to Arrow as it arrives and convert to pandas once. Object
names are built from a checked symbol and timeframe only (`bars_name`) and generated partition keys.
This is the data domain's NATS adapter; the bytes go through ktrdr.transport.objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pandas as pd
import pyarrow as pa
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
    from_tables,
    read_table,
    slice_bars,
    to_parquet,
)
from ktrdr.data.window import SeriesWindow, off_loop
from ktrdr.errors import DataError, ValidationError
from ktrdr.transport import objects
from ktrdr.transport.objects import BARS, ObjectConflict, Stored

MAX_SERIES_BYTES = 4 << 30
SERIES_HEADER = "Ktrdr-Series"
# Partitions fetched at once by one read (each a few MB at most; each decoded on a thread as it
# arrives, so decoding overlaps the fetching): 16 measured 10-15% faster than 8 on 120 partitions.
READ_CONCURRENCY = 16
# Single-chunk partitions got in one batched direct get (objects.get_single_chunks): 30 at a time,
# 4 batches at once, measured 0.08 s for 120 partitions (21 MB) against 0.12 s one request each and
# 0.09 s for the same bars as one whole object.
READ_BATCH = 30
PARTITION_READ_TIMEOUT_S = 120.0  # a SeriesWindow's read of one partition, from its worker thread
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
                manifest = await self._manifest(name, st)
                df = await self._entries_frame(overlapping(manifest, lo, hi))
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

    async def _manifest(self, name: str, st: Stored) -> Manifest:
        data = await objects.fetch(self.js, st, max_bytes=MAX_MANIFEST_BYTES)
        assert data is not None
        return decode_manifest(name, data)

    async def _entries_frame(self, entries: list[PartitionEntry]) -> pd.DataFrame:
        """The partitions listed (in time order) as one frame: fetched READ_CONCURRENCY at a time, each
        decoded to Arrow on a thread as it arrives, concatenated as Arrow and converted to pandas once.
        Entries of one manifest are disjoint and in order (checked on their first/last bars), so no
        re-sort or dedupe unless that check fails."""
        sem = asyncio.Semaphore(READ_CONCURRENCY)
        tables: dict[str, pa.Table] = {}
        # Partitions whose chunk id the manifest gives and this host has not cached: batched gets of
        # READ_BATCH, each batch decoded on a thread as it arrives; the others (and any a batch did
        # not bring back) one at a time.
        cached: dict[str, Path] = {}
        if self.cache is not None:
            for e in entries:
                if e.nuid is not None and (path := self.cache.lookup(e.digest)) is not None:
                    cached[e.name] = path
        direct = [e for e in entries if e.nuid is not None and e.name not in cached]

        def read_cached() -> dict[str, pa.Table]:
            """The partitions this host has cached (keyed by the manifest's digest), all in one worker
            thread: one hop for all, not one each (11 for 10 years of 1h: ~10 ms of hops and wake-ups)."""
            out: dict[str, pa.Table] = {}
            for name, path in cached.items():
                try:
                    out[name] = read_table(path)
                except DataError:
                    path.unlink(missing_ok=True)  # a damaged cache file is only a cache miss: read below
            return out

        async def batch(group: list[PartitionEntry]) -> None:
            async with sem:
                objs = [Stored(bucket=BARS, name=e.name, size=e.size, chunks=1, digest=e.digest, nuid=e.nuid or "",
                               seq=0) for e in group]
                try:
                    got = await objects.get_single_chunks(self.js, BARS, objs)
                except DataError:
                    got = {}  # refused (an older server): each is read on its own below
                found = [(e, got[e.nuid]) for e in group if e.nuid in got]
                if self.cache is not None:
                    for e, data in found:
                        await asyncio.to_thread(self.cache.put, e.digest, data)
                decoded = await asyncio.to_thread(lambda: [read_table(data) for _, data in found])
                tables.update((e.name, t) for (e, _), t in zip(found, decoded, strict=True))

        async def single(e: PartitionEntry) -> None:
            tables[e.name] = await self._partition(e, sem)

        async def from_cache() -> None:
            if cached:
                tables.update(await asyncio.to_thread(read_cached))

        await asyncio.gather(from_cache(),
                             *(batch(direct[i:i + READ_BATCH]) for i in range(0, len(direct), READ_BATCH)))
        await asyncio.gather(*(single(e) for e in entries if e.name not in tables))
        ordered = all(pd.Timestamp(a.end) < pd.Timestamp(b.start) for a, b in itertools.pairwise(entries))
        return await asyncio.to_thread(from_tables, [tables[e.name] for e in entries], ordered=ordered)

    async def _partition(self, e: PartitionEntry, sem: asyncio.Semaphore | None = None) -> pa.Table:
        async with sem if sem is not None else contextlib.nullcontext():
            if e.nuid is not None:  # one chunk whose id the manifest gives: read it, its digest checked
                return await self._table(Stored(bucket=BARS, name=e.name, size=e.size, chunks=1, digest=e.digest,
                                                nuid=e.nuid, seq=0))
            st = await objects.stat(self.js, BARS, e.name, direct=True)
            if st is None or st.deleted or st.digest != e.digest:
                raise DataError(f"BARS/{e.name}: replaced while it was read")
            return await self._table(st)

    async def read_partition(self, e: PartitionEntry) -> pd.DataFrame:
        """One partition a manifest lists, as a frame (DataError when it was replaced meanwhile)."""
        return await asyncio.to_thread(from_tables, [await self._partition(e)])

    def partition_reader(self) -> Callable[[PartitionEntry], pd.DataFrame]:
        """`read_partition` for a SeriesWindow, which calls it from worker threads: the read runs on
        this event loop, the calling thread waits for it. Refused on the loop's own thread (it would
        wait for itself)."""
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()

        def read(e: PartitionEntry) -> pd.DataFrame:
            if threading.get_ident() == loop_thread:
                raise RuntimeError("a SeriesWindow is called from worker threads (window.off_loop), "
                                   "never on the event loop")
            return asyncio.run_coroutine_threadsafe(self.read_partition(e), loop).result(PARTITION_READ_TIMEOUT_S)

        return read

    async def _frame(self, st: Stored) -> pd.DataFrame:
        return await asyncio.to_thread(from_tables, [await self._table(st)])

    async def _table(self, st: Stored) -> pa.Table:
        path = self.cache.lookup(st.digest) if self.cache is not None else None
        if path is not None:
            try:
                return await asyncio.to_thread(read_table, path)
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
                return await asyncio.to_thread(read_table, path)
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
        return await asyncio.to_thread(read_table, data)

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
        parts = await asyncio.to_thread(split, df, meta.timeframe)
        keep = {key: old[key] for key, part in parts.items()
                if key in old and touched is not None and key not in touched and old[key].rows == len(part)}
        return await self._commit(meta, {k: p for k, p in parts.items() if k not in keep}, keep, replaces, manifest)

    async def write_partitions(self, meta: SeriesMeta, parts: dict[str, pd.DataFrame], *, replaces: Stored | None,
                               manifest: Manifest | None) -> tuple[Stored, Manifest]:
        """Store these partitions (each whole: every bar of its period) and a manifest listing them
        with every other partition `manifest` (what `replaces` lists) lists, compare-and-set on it
        (ObjectConflict otherwise, nothing changed that a reader sees). What a SeriesWindow writes."""
        keep = {e.key: e for e in manifest.partitions if e.key not in parts} if manifest is not None else {}
        return await self._commit(meta, parts, keep, replaces, manifest)

    async def _commit(self, meta: SeriesMeta, parts: dict[str, pd.DataFrame], keep: dict[str, PartitionEntry],
                      replaces: Stored | None, manifest: Manifest | None) -> tuple[Stored, Manifest]:
        """Put `parts` under fresh names, then the manifest (them + `keep`) with compare-and-set, then
        delete what `manifest` listed that the new one does not."""
        name = bars_name(meta.symbol, meta.timeframe)
        header = msgspec.json.encode(msgspec.structs.replace(meta, digest="")).decode()
        old = {e.key: e for e in manifest.partitions} if manifest is not None else {}
        generation = (manifest.generation + 1) if manifest is not None else 1
        entries: dict[str, PartitionEntry] = dict(keep)
        for key, part in sorted(parts.items()):
            if not len(part):
                continue
            data = await asyncio.to_thread(to_parquet, part)
            pname = partition_name(name, key, generation)
            pst = await objects.put(self.js, BARS, pname, data, conditional=True, replaces=None)
            self.bytes_written += len(data)
            if self.cache is not None:
                await asyncio.to_thread(self.cache.put, pst.digest, data)
            entries[key] = await asyncio.to_thread(entry, key, pname, part, pst.digest, len(data), meta.timeframe,
                                                   pst.nuid if pst.chunks == 1 else None)
            del data
        new = Manifest(generation=generation, partitions=sorted(entries.values(), key=lambda e: e.key))
        body = msgspec.json.encode(new)
        if len(body) > MAX_MANIFEST_BYTES:  # runs are an optimisation: listed without them, it fits
            body = msgspec.json.encode(msgspec.structs.replace(new, partitions=[
                msgspec.structs.replace(e, runs=None) for e in new.partitions]))
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

    async def open_window(self, symbol: str, timeframe: str, *, migrate: bool = True
                          ) -> tuple[SeriesWindow, Stored | None] | None:
        """A SeriesWindow on the stored series (nothing read but its manifest) and the object a write
        of it replaces. A whole-series object written the old way is migrated first when `migrate`
        (read whole, once, and written as partitions: its last whole read), or None is returned."""
        sym, tf = bars_name(symbol, timeframe).split("/")
        name = f"{sym}/{tf}"
        reader = self.partition_reader()
        for _ in range(5):
            st = await objects.stat(self.js, BARS, name)
            if st is None or st.deleted:
                return SeriesWindow(sym, tf, None, None, reader), st
            meta = self._meta(st, name)
            try:
                if st.header(MANIFEST_HEADER) is not None:
                    return SeriesWindow(sym, tf, await self._manifest(name, st), meta, reader), st
                if not migrate:
                    return None
                df = await self._frame(st)
                st, manifest = await self.write_series(df, meta, replaces=st)
                del df
                assert manifest is not None
                return SeriesWindow(sym, tf, manifest, meta, reader), st
            except (DataError, ObjectConflict):
                continue  # replaced while read: the newer one
        raise DataError(f"BARS/{name} keeps changing; try again")

    async def merge(self, symbol: str, timeframe: str, df: pd.DataFrame, source: str) -> tuple[int, Stored]:
        """Merge bars into the stored series (compare-and-set, retried on a concurrent write); returns
        (new timestamps, the stored object). The caller holds the series' writer lease."""
        sym, tf = bars_name(symbol, timeframe).split("/")
        for _ in range(5):
            if not self.partitioned:
                break
            # Only the partitions the bars fall in are read and written.
            opened = await self.open_window(sym, tf)
            assert opened is not None
            window, stored = opened
            added = await off_loop(window.merge, sym, tf, df, source)
            parts, _, meta, _ = await off_loop(window.dirty)
            assert meta is not None
            try:
                return added, (await self.write_partitions(meta, parts, replaces=stored, manifest=window.manifest))[0]
            except ObjectConflict:
                continue
        for _ in range(5 if not self.partitioned else 0):
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
    """Writes a load's SeriesWindow (or a whole SeriesBuffer) to BARS: periodically while the load
    runs, and once at the end. A window's write stores its dirty partitions and the manifest, after
    which they leave memory; it is due early when more than SeriesWindow.MAX_DIRTY are dirty."""

    def __init__(self, bars: BarStore, buffer: SeriesBuffer | SeriesWindow, stored: Stored | None, *, every_s: float,
                 every_segments: int, manifest: Manifest | None = None) -> None:
        self.bars, self.buffer, self.stored, self.manifest = bars, buffer, stored, manifest
        self.every_s, self.every_segments = every_s, every_segments
        self.written_version = buffer.version
        self.writes = 0
        self.write_s = 0.0  # seconds spent writing (serialising + putting), for the result
        self._lock = asyncio.Lock()

    async def flush(self) -> None:
        if isinstance(self.buffer, SeriesWindow):
            return await self._flush_window(self.buffer)
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

    async def _flush_window(self, window: SeriesWindow) -> None:
        async with self._lock:
            parts, versions, meta, version = await off_loop(window.dirty)
            if version == self.written_version or meta is None:
                return
            began = time.monotonic()
            for _ in range(5):
                try:
                    self.stored, manifest = await self.bars.write_partitions(
                        meta, parts, replaces=self.stored, manifest=self.manifest)
                    break
                except ObjectConflict:
                    # Written by someone outside the lease (or after we lost it): theirs, ours on top.
                    self.stored, self.manifest = await self._rebase(window, meta)
                    parts, versions, meta, version = await off_loop(window.dirty)
                    assert meta is not None
            else:
                raise ObjectConflict(f"BARS/{meta.symbol}/{meta.timeframe} keeps changing under this load")
            del parts
            self.manifest = manifest
            await off_loop(window.written, manifest, versions)
            self.written_version = version
            self.writes += 1
            self.write_s += time.monotonic() - began

    async def _rebase(self, window: SeriesWindow, meta: SeriesMeta) -> tuple[Stored | None, Manifest | None]:
        name = bars_name(meta.symbol, meta.timeframe)
        st = await objects.stat(self.bars.js, BARS, name)
        if st is None or st.deleted:
            await off_loop(window.rebase, None, None)
            return st, None
        theirs = self.bars._meta(st, name)
        if st.header(MANIFEST_HEADER) is None:  # a whole-series object written the old way
            whole = await self.bars._frame(st)
            await off_loop(window.rebase, None, theirs, whole)
            return st, None
        manifest = await self.bars._manifest(name, st)
        await off_loop(window.rebase, manifest, theirs)
        return st, manifest

    def due(self, last_t: float, last_merges: int) -> bool:
        if isinstance(self.buffer, SeriesWindow) and self.buffer.dirty_count > self.buffer.MAX_DIRTY:
            return True
        return self.buffer.merges - last_merges >= self.every_segments or time.monotonic() - last_t >= self.every_s

    async def _periodic(self) -> None:
        last_t, last_merges = time.monotonic(), self.buffer.merges
        wake = asyncio.Event()
        if isinstance(self.buffer, SeriesWindow):  # too many partitions dirty: write them now
            loop = asyncio.get_running_loop()
            self.buffer.on_full = lambda: loop.call_soon_threadsafe(wake.set)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), min(1.0, self.every_s))
            wake.clear()
            if self.due(last_t, last_merges) and self.buffer.version != self.written_version:
                await self.flush()
                last_t, last_merges = time.monotonic(), self.buffer.merges

    @contextlib.asynccontextmanager
    async def running(self, log: Any) -> AsyncIterator[SeriesWriter]:
        task = asyncio.create_task(self._periodic())
        try:
            yield self
        except BaseException:
            await _stop(task)
            self._detach()
            try:  # the bars are paid for: store them even though the load failed or was cancelled
                await asyncio.shield(self.flush())
            except Exception as exc:
                log.error("could not store the bars fetched before the load ended: %s", exc)
            raise
        await _stop(task)
        self._detach()
        await asyncio.shield(self.flush())

    def _detach(self) -> None:
        if isinstance(self.buffer, SeriesWindow):
            self.buffer.on_full = None  # no writer wakes any more: a merge must not wait for one


async def _stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
