"""job-manager (the seed's DataManager + DataJobManager): handles `work.data.<pool>`: runs a
DataLoadingJob (gap analysis, segment plan, concurrent paced fetching, merge, validate/repair) whose
fetches go to the ib actor(s) over `ib.*`, and publishes the job's progress as is. Pacing waits
reported by the ib actor show up in the progress context (`waiting 12 s for IB pacing`).

The series lives in the object bucket BARS (`<SYMBOL>/<TF>`), not on this host's disk: a load takes
the series' writer lease (ktrdr.data.series_lease: a second load of the same series waits and says
for whom), reads the stored series' manifest (ktrdr.data.bars_store.BarStore), plans from it, merges
fetched segments into the partitions they fall in, read through the digest cache when first touched
(SeriesWindow, the job's SeriesStore: memory bounded by a few partitions, not the series) and writes
those partitions and the manifest with compare-and-set (SeriesWriter): every `flush_every_segments`
merges, `flush_every_s` seconds or more than SeriesWindow.MAX_DIRTY partitions touched
while it runs (a killed job-manager loses little) and once at the end whatever the outcome, so segments
fetched before a cancel or a failure stay stored. A load that fails on a full disk fails with
`disk_full`, naming the disk (ktrdr.disk).
"""

from __future__ import annotations

import asyncio
import functools
from datetime import datetime
from typing import Any, ClassVar

import pandas as pd

from actors.runtime import Actor, OperationContext
from events.messages import DataContext, LoadData, ProgressState, SeriesLease
from ktrdr import disk
from ktrdr.data.bars_store import BarStore, SeriesWriter
from ktrdr.data.calendar import normalize_symbol
from ktrdr.data.loading import DataLoadingJob, Segment
from ktrdr.data.series_lease import series_lease
from ktrdr.data.store import DigestCache, SeriesBuffer, SeriesStore
from ktrdr.transport import IbRequester, objects


class JobManager(Actor):
    role = LoadData.role
    work_domain = "data"
    max_concurrency = 4
    # Segments in flight per load: one burst's worth. IB's burst rule allows 5 requests per contract
    # per 2 s, so keeping that pace takes 2.5 x latency requests open (5 at 2 s per answer). More
    # would only wait in the ib actor's PacingLimiter and, measured, stretch the cancel tail: a cancel
    # waits for fetched segments to be merged (8 in flight: p99 32-63 ms; 4: 5 ms).
    segment_concurrency = 5
    # Periodic writes of a long load. One write stores the partitions the new bars touched (python -m
    # bench partitions: 10 years of AAPL 1m, a day appended, 14 KB and 0.06 s; the whole series was
    # 17 MB and 0.4 s): every 30 s is well under a percent of a load that IB paces at 60 requests per
    # 10 minutes, and a killed job-manager loses at most 30 s of fetching.
    flush_every_s: ClassVar[float] = 30.0
    flush_every_segments: ClassVar[int] = 200

    @functools.cached_property
    def cache(self) -> DigestCache:
        return DigestCache(self.settings.cache_dir, self.settings.cache_max_bytes, self.settings.disk_min_free_bytes)

    async def on_start(self) -> None:
        # Downloads a killed process left half-written (this host's cache is shared by its processes).
        await asyncio.to_thread(self.cache.sweep)
        self.spawn(self._sweep_orphans(), name=f"{self.id}-orphans")
        # The exchange calendar takes ~0.5-0.9 s to build, once per process: build it now, off the loop,
        # rather than inside the first load (whose cancel would wait for it).
        from ktrdr.data.calendar import nyse_calendar

        self.spawn(asyncio.to_thread(nyse_calendar), name=f"{self.id}-calendar")

    async def _sweep_orphans(self) -> None:
        """Chunks in BARS that no series points to (a writer killed mid-put, or one that gave up
        before the server took its clean-up) are purged, now and every `chunk_orphan_age_s`."""
        assert self.js is not None
        age = self.settings.chunk_orphan_age_s
        while True:
            try:
                parts = await BarStore(self.js).sweep_partitions()
                if parts:
                    self.log.info("deleted %d partition(s) no manifest lists from BARS", parts)
                n = await objects.sweep_orphans(self.js, objects.BARS, older_than_s=age)
                if n:
                    self.log.info("purged %d orphaned chunk set(s) from BARS", n)
            except Exception as exc:  # the server restarting, say: the next sweep tries again
                self.log.warning("BARS orphan sweep failed: %s", exc)
            await asyncio.sleep(age)

    async def handle(self, op: OperationContext) -> dict[str, Any]:
        try:
            return await self._load(op)
        except Exception as exc:
            # A full disk (the server's store, or this host's) is named as such, with what to do, rather
            # than "internal error: TimeoutError" for a write the server never acknowledged.
            full = disk.explain(exc, self.settings)
            if full is None:
                raise
            raise full from exc

    async def _load(self, op: OperationContext) -> dict[str, Any]:
        cmd = op.command
        assert isinstance(cmd, LoadData) and self.nc is not None and self.js is not None
        symbol = normalize_symbol(cmd.symbol)
        tf = cmd.timeframe
        ib = IbRequester(self.nc, pool=cmd.pool)  # `--on` names the IB account/gateway's pool
        source = "local"
        if cmd.mode != "local":
            _contract, source = await ib.contract(symbol, op.op_id)  # unknown symbols fail here, fast
        bars = BarStore(self.js, self.cache)
        if cmd.mode == "local":  # reads only: no lease, no write
            opened = await bars.open_window(symbol, tf, migrate=False)
            if opened is not None:
                store: SeriesStore = opened[0]
            else:  # a whole-series object written the old way: read as it is (migrated by a write)
                stored = await bars.load(symbol, tf)
                store = SeriesBuffer(symbol, tf, stored.df, stored.meta)
            job = self._job(op, store, symbol, ib, source)
            return {**(await job.run()).to_dict(), "object": f"{symbol}/{tf}"}
        lease = await series_lease(self.js, symbol, tf, holder=self.id, op_id=op.op_id,
                                   ttl_s=self.settings.worker_timeout_s)
        async with lease.held(op.token, on_wait=functools.partial(self._waiting, op, cmd)):
            # Only the manifest is read here (and a series stored the old way is migrated, its one
            # whole read); the load reads and writes the partitions its segments fall in.
            migrated = await bars.open_window(symbol, tf)
            assert migrated is not None
            window, stored_obj = migrated
            writer = SeriesWriter(bars, window, stored_obj, every_s=self.flush_every_s,
                                  every_segments=self.flush_every_segments, manifest=window.manifest)
            async with writer.running(self.log):
                result = await self._job(op, window, symbol, ib, source).run()
        st = writer.stored
        return {**result.to_dict(), "object": f"{symbol}/{tf}", "digest": st.digest if st else None,
                "writes": writer.writes, "write_s": round(writer.write_s, 3)}

    def _job(self, op: OperationContext, store: SeriesStore, symbol: str, ib: IbRequester, source: str
             ) -> DataLoadingJob:
        cmd = op.command
        assert isinstance(cmd, LoadData)
        tf = cmd.timeframe

        async def fetch(seg: Segment) -> pd.DataFrame:
            df, _src = await ib.bars(symbol, tf, pd.Timestamp(seg.start).to_pydatetime(),
                                     pd.Timestamp(seg.end).to_pydatetime(), op_id=op.op_id, on_wait=job.note_wait)
            return df

        async def head() -> datetime | None:
            return await ib.head(symbol, tf, op.op_id)

        job = DataLoadingJob(store, symbol, tf, cmd.mode, cmd.start, cmd.end,
                             fetch=fetch, head_timestamp=head, cancel=op.token, on_progress=op.progress,
                             max_concurrency=self.segment_concurrency, source=source,
                             pacing_wait_s=60.0 * self.settings.ib_time_scale,
                             gateway_wait_s=self.settings.ib_gateway_wait_s)
        return job

    @staticmethod
    def _waiting(op: OperationContext, cmd: LoadData, holder: SeriesLease) -> None:
        who = holder.op_id or f"{holder.holder} (ktrdr data import)"
        state = f"waiting for {who} loading the same series"
        op.progress(ProgressState(
            percentage=0.0, message=f"Loading {cmd.symbol} {cmd.timeframe}: {state}", phase="waiting",
            context=DataContext(symbol=cmd.symbol, timeframe=cmd.timeframe, mode=cmd.mode, state=state)))

    def cancelled_message(self, op: OperationContext, where: str) -> str:
        cmd = op.command
        assert isinstance(cmd, LoadData)
        return (f"Data load of {cmd.symbol} {cmd.timeframe} cancelled at {where}; segments fetched before the "
                f"cancel are stored" if where else "Data load cancelled")
