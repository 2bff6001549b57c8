"""The BARS bucket as a store of series: one Parquet object `<SYMBOL>/<TF>` per series, its SeriesMeta
in the object's header `Ktrdr-Series`, read through this host's DigestCache.

`BarStore` reads a whole series (or a window of it), writes one with compare-and-set (only if it is
still the object that was read) and merges bars into one (compare-and-set, retried on a concurrent
write). `SeriesWriter` is how a data load stores what it fetched: the load merges segments into an
in-memory SeriesBuffer, and the writer stores snapshots of it every so often while the load runs and
once at the end whatever the outcome, merging on top of a concurrent write rather than losing it.
Object names are built from a checked symbol and timeframe only (`bars_name`). This is the data
domain's NATS adapter; the bytes go through ktrdr.transport.objects.
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
from ktrdr.data.store import (
    SOURCES,
    DigestCache,
    SeriesBuffer,
    SeriesMeta,
    empty_frame,
    from_parquet,
    slice_bars,
    to_parquet,
)
from ktrdr.errors import DataError, ValidationError
from ktrdr.transport import objects
from ktrdr.transport.objects import BARS, ObjectConflict, Stored

MAX_SERIES_BYTES = 4 << 30
SERIES_HEADER = "Ktrdr-Series"
_Metas = list[SeriesMeta]  # for annotations inside BarStore, whose `list` method shadows the builtin


def bars_name(symbol: str, timeframe: str) -> str:
    """`AAPL/1h`: a series' object name, from a checked symbol and timeframe only."""
    return f"{check_symbol(symbol)}/{check_timeframe(timeframe)}"


@dataclass
class StoredSeries:
    """A series as read from BARS."""

    df: pd.DataFrame
    meta: SeriesMeta | None
    stored: Stored | None  # what a conditional write of this series expects (None: nothing stored)


class BarStore:
    """Series in BARS, read through this host's DigestCache (when given)."""

    def __init__(self, js: JetStreamContext, cache: DigestCache | None = None) -> None:
        self.js, self.cache = js, cache

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

    async def load(self, symbol: str, timeframe: str) -> StoredSeries:
        """The whole stored series (an empty frame when none) and what a conditional write expects."""
        name = bars_name(symbol, timeframe)
        for attempt in range(3):
            st = await objects.stat(self.js, BARS, name)
            if st is None or st.deleted:
                return StoredSeries(empty_frame(), None, st)
            try:
                return StoredSeries(await self._frame(st), self._meta(st, name), st)
            except DataError:
                if attempt == 2:
                    raise  # replaced while read: read the newer one
        raise AssertionError("unreachable")

    async def read(self, symbol: str, timeframe: str, start: datetime | None = None,
                   end: datetime | None = None) -> pd.DataFrame:
        """Stored bars with start <= t < end (either bound optional); an empty frame when none."""
        return slice_bars((await self.load(symbol, timeframe)).df, start, end)

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
        assert data is not None
        return await asyncio.to_thread(from_parquet, data)

    async def write(self, df: pd.DataFrame, meta: SeriesMeta, *, replaces: Stored | None) -> Stored:
        """Store a whole series, only if it is still `replaces` (ObjectConflict otherwise)."""
        name = bars_name(meta.symbol, meta.timeframe)
        data = await asyncio.to_thread(to_parquet, df)
        header = msgspec.json.encode(msgspec.structs.replace(meta, digest="")).decode()
        st = await objects.put(self.js, BARS, name, data, headers={SERIES_HEADER: header},
                               conditional=True, replaces=replaces)
        if self.cache is not None:  # this host reads it next: no download
            await asyncio.to_thread(self.cache.put, st.digest, data)
        return st

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
                return added, await self.write(merged, meta, replaces=current.stored)
            except ObjectConflict:
                continue
        raise DataError(f"BARS/{sym}/{tf} keeps changing; try again")

    async def list(self) -> _Metas:
        out = []
        for st in await objects.list_objects(self.js, BARS):
            with contextlib.suppress(DataError, ValidationError):
                out.append(self._meta(st, st.name))
        return sorted(out, key=lambda m: (m.symbol, m.timeframe))


class SeriesWriter:
    """Writes a load's SeriesBuffer to BARS: periodically while the load runs, and once at the end."""

    def __init__(self, bars: BarStore, buffer: SeriesBuffer, stored: Stored | None, *, every_s: float,
                 every_segments: int) -> None:
        self.bars, self.buffer, self.stored = bars, buffer, stored
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
            for _ in range(5):
                try:
                    self.stored = await self.bars.write(df, meta, replaces=self.stored)
                    break
                except ObjectConflict:
                    # Written by someone outside the lease (or after we lost it): theirs, ours on top.
                    current = await self.bars.load(meta.symbol, meta.timeframe)
                    both = SeriesBuffer(meta.symbol, meta.timeframe, current.df, current.meta)
                    await asyncio.to_thread(both.merge, meta.symbol, meta.timeframe, df, meta.source, meta.simulated)
                    df, meta, _ = await asyncio.to_thread(both.snapshot)
                    assert meta is not None
                    self.stored = current.stored
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
