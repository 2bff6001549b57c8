"""DataLoadingJob: one data load (symbol, timeframe, mode) as async domain code, into a SeriesStore
(the job-manager's SeriesBuffer of a BARS series, or a local DataStore).

The job resolves the range, finds gaps against the trading calendar, plans IB-sized segments and
fetches them CONCURRENTLY (at most `max_concurrency` in flight; IB pacing is the fetcher's job).
Each segment is repaired and merged into the store as soon as it arrives, so whatever was fetched
before a cancel or a failure stays stored and the next load fetches only what is still missing.

Errors: PacingError is retried with backoff that a cancel interrupts; NoDataError marks a segment
empty; UnknownSymbolError fails the whole job at once; any segment still failing after retries makes
the job raise DataError after every other segment has finished.
A gateway that goes away (DisconnectedError while no request gets through) is waited for, not
counted per segment: progress says "IB gateway disconnected; reconnecting", segments retry with
backoff (1, 2, 4, 8, 8 ... s), and the load resumes the moment the gateway is back. If it stays away
for `gateway_wait_s` (30 s by default, from the first failure with no success since) the job stops at
once with GatewayUnreachableError (a DisconnectedError) naming the gateway; what was fetched before
stays stored. So a dead gateway fails a load within gateway_wait_s plus one backoff step (<= 8 s),
however many segments remain. A DisconnectedError of one segment while others succeed is retried
`retries` times like any other, then fails that segment.
Cancellation: the token is checked before each segment; a cancel also cancels the in-flight fetch
tasks, waits for them, and raises OperationCancelledError(where="segment i/n").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from events.messages import DataContext, ProgressState
from ktrdr import tracing
from ktrdr.cancellation import CancellationToken
from ktrdr.data.calendar import Instrument, expected_bar_starts, lookup, normalize_symbol, to_utc
from ktrdr.data.gaps import Gap, find_gaps
from ktrdr.data.planning import Segment, parse_mode, plan_segments, resolve_range
from ktrdr.data.store import SeriesStore
from ktrdr.data.timeframes import Timeframe, parse_timeframe
from ktrdr.data.validation import RepairReport, repair_bars
from ktrdr.data.window import off_loop
from ktrdr.errors import (
    DataError,
    DisconnectedError,
    NoDataError,
    OperationCancelledError,
    PacingError,
    UnknownSymbolError,
    ValidationError,
)

FetchFn = Callable[[Segment], Awaitable[pd.DataFrame]]


@runtime_checkable
class GapPlanner(Protocol):
    """A SeriesStore that finds the gaps of a range without its bars (ktrdr.data.window.SeriesWindow):
    (the gaps, the missing bar starts), as gaps.find_gaps_in_chunks returns them."""

    def gaps(self, inst: Instrument, tf: Timeframe | str, start: pd.Timestamp, end: pd.Timestamp
             ) -> tuple[list[Gap], pd.DatetimeIndex]: ...


class GatewayUnreachableError(DisconnectedError):
    """The IB gateway stayed away longer than the load waits for it: the whole job stops."""
HeadFn = Callable[[], Awaitable[datetime | None]]


@dataclass
class LoadResult:
    symbol: str
    timeframe: str
    mode: str
    segments_planned: int = 0
    segments_fetched: int = 0
    segments_failed: int = 0
    segments_empty: int = 0
    bars_added: int = 0
    bars_total: int = 0
    gaps_found: int = 0
    requested_start: str | None = None
    requested_end: str | None = None
    elapsed_s: float = 0.0
    source: str = "ib"
    simulated: bool = False
    repairs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DataLoadingJob:
    def __init__(
        self,
        store: SeriesStore,
        instrument: Instrument | str,
        timeframe: Timeframe | str,
        mode: str,
        start: datetime | pd.Timestamp | str | None,
        end: datetime | pd.Timestamp | str | None,
        fetch: FetchFn,
        head_timestamp: HeadFn,
        cancel: CancellationToken,
        on_progress: Callable[[ProgressState], None] | None = None,
        max_concurrency: int = 4,
        source: str = "ib",
        now: datetime | pd.Timestamp | str | None = None,
        *,
        retries: int = 3,
        backoff_s: float = 1.0,
        pacing_wait_s: float = 60.0,
        gateway_wait_s: float = 30.0,
        universe: dict[str, Instrument] | None = None,
    ) -> None:
        if isinstance(instrument, str):
            inst = lookup(instrument, universe)
            if inst is None:
                raise ValidationError(f"unknown symbol {normalize_symbol(instrument)!r}")
            instrument = inst
        if max_concurrency < 1:
            raise ValidationError("max_concurrency must be at least 1")
        self.store = store
        self.inst = instrument
        self.tf = parse_timeframe(timeframe)
        self.mode = parse_mode(mode)
        self.start = start
        self.end = end
        self.fetch = fetch
        self.head_timestamp = head_timestamp
        self.cancel = cancel
        self.on_progress = on_progress
        self.max_concurrency = max_concurrency
        self.source = source
        self.now = to_utc(now, "now") if now is not None else None
        self.retries = retries
        self.backoff_s = backoff_s
        # KTRDR waited a fixed 60 s after a pacing violation; the fetcher normally paces before that.
        self.pacing_wait_s = pacing_wait_s
        self.gateway_wait_s = gateway_wait_s
        self._down_since: float | None = None  # monotonic time of the first DisconnectedError since a success
        self._successes = 0  # IB calls that got an answer (an outage is failures with none of these)
        self.result = LoadResult(self.inst.symbol, self.tf, self.mode, source=source)
        self.repairs = RepairReport()
        self._done = 0
        self._bars = 0
        self._inflight: set[int] = set()
        self._first_error = ""
        self._aborted = False

    # --- progress ---------------------------------------------------------------------------------
    def _emit(self, phase: str, state: str = "", segment: int = 0, waiting_s: float = 0.0) -> None:
        """Report progress as the wire's ProgressState: segments done of planned (never the index of
        the segment in flight, which goes back and forth with several in flight)."""
        if self.on_progress is None:
            return
        n = self.result.segments_planned
        pct = 100.0 if phase == "done" else (100.0 * self._done / n if n else 0.0)
        self.on_progress(ProgressState(
            percentage=round(pct, 2),
            message=f"Loading {self.inst.symbol} {self.tf} data ({self.mode} mode) [{self._done}/{n}]",
            current_step=self._done, total_steps=n, items_processed=self._bars, phase=phase,
            context=DataContext(symbol=self.inst.symbol, timeframe=self.tf, mode=self.mode,
                                segment_index=segment, segment_count=n, segments_done=self._done,
                                bars_fetched=self._bars, source=self.source, waiting_s=round(waiting_s, 3),
                                state=state or phase)))

    def note_wait(self, wait_s: float, why: str = "") -> None:
        """The fetcher is waiting (IB pacing): say so while it happens, not after."""
        self._emit("fetching", why or "waiting for IB pacing", waiting_s=wait_s)

    def _where(self) -> str:
        n = self.result.segments_planned
        i = min(self._inflight) if self._inflight else min(self._done + 1, n)
        return f"segment {i}/{n}" if n else "analyzing"

    # --- the job ----------------------------------------------------------------------------------
    async def run(self) -> LoadResult:
        t0 = time.monotonic()
        self.cancel.raise_if_cancelled("analyzing")
        self._emit("analyzing")
        now = self.now if self.now is not None else pd.Timestamp.now(tz="UTC")
        stored = await off_loop(self.store.covered_range, self.inst.symbol, self.tf)
        head: datetime | None = None
        if self.mode != "local":
            try:
                head = await self._through_outages(self.head_timestamp, 0)
            except NoDataError:
                head = None  # IB knows no head timestamp: fall back to the requested/default start
        self.cancel.raise_if_cancelled("analyzing")
        start, end = resolve_range(self.mode, stored, head, self.start, self.end, now)
        r = self.result
        r.requested_start, r.requested_end = start.isoformat(), end.isoformat()
        segments: list[Segment] = []
        if self.mode != "local" and start < end:
            segments, r.gaps_found = await off_loop(self._plan, start, end)
        r.segments_planned = len(segments)
        if segments:
            await self._fetch_all(segments)
        meta = await off_loop(self.store.metadata, self.inst.symbol, self.tf)
        r.bars_total = meta.rows if meta else 0
        r.simulated = meta.simulated if meta else self.source == "sim"
        r.repairs = self.repairs.to_dict()
        r.elapsed_s = round(time.monotonic() - t0, 3)
        if r.segments_failed:
            raise DataError(
                f"{r.segments_failed} of {r.segments_planned} segments failed for {r.symbol} {r.timeframe}; "
                f"the {r.segments_fetched} fetched segments ({r.bars_added} new bars) are stored",
                hint=f"first error: {self._first_error}; rerun the load to fetch only what is missing",
            )
        self._emit("done")
        return r

    def _plan(self, start: pd.Timestamp, end: pd.Timestamp) -> tuple[list[Segment], int]:
        """Gap analysis and the segment plan: CPU work (the calendar, ~60 ms per million bars), so it
        runs on a thread, never on the loop that carries cancels. A store that plans from a summary
        (a SeriesWindow: the manifest's runs, a partition at a time) is asked for its gaps and their
        missing bars; any other is read over the range."""
        if isinstance(self.store, GapPlanner):
            gaps, missing = self.store.gaps(self.inst, self.tf, start, end)
            return plan_segments(gaps, self.tf, bar_starts=missing), len(gaps)
        stored_df = self.store.read(self.inst.symbol, self.tf, start, end)
        expected = expected_bar_starts(self.inst, self.tf, start, end)
        gaps = find_gaps(stored_df.index, self.inst, self.tf, start, end, expected=expected)
        return plan_segments(gaps, self.tf, bar_starts=expected), len(gaps)

    async def _fetch_all(self, segments: list[Segment]) -> None:
        sem = asyncio.Semaphore(self.max_concurrency)
        tasks = {asyncio.create_task(self._segment(seg, sem, len(segments))) for seg in segments}
        cancel_wait = asyncio.ensure_future(self.cancel.wait())  # wakes even when tripped from a thread
        pending: set[asyncio.Task[Any]] = set(tasks)
        try:
            while pending:
                done, pending = await asyncio.wait(pending | {cancel_wait}, return_when=asyncio.FIRST_COMPLETED)
                pending.discard(cancel_wait)
                done.discard(cancel_wait)
                errors = [t.exception() for t in done if not t.cancelled()]  # retrieved, so never "lost"
                if cancel_wait.done() or self.cancel.is_cancelled:
                    where = self._where()
                    await self._stop(pending)
                    self.cancel.raise_if_cancelled(where)
                for exc in errors:
                    if isinstance(exc, OperationCancelledError | UnknownSymbolError | GatewayUnreachableError):
                        await self._stop(pending)  # nothing else will succeed for this symbol
                        raise exc
                    if exc is not None:
                        raise exc
        finally:
            cancel_wait.cancel()
            await self._stop(pending)

    @staticmethod
    async def _stop(tasks: set[asyncio.Task[Any]]) -> None:
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()

    async def _segment(self, seg: Segment, sem: asyncio.Semaphore, n: int) -> None:
        async with sem:
            self.cancel.raise_if_cancelled(f"segment {seg.index}/{n}")  # checked before each segment
            if self._aborted:
                return  # the job is failing fast; this segment never starts
            self._inflight.add(seg.index)
            try:
                with tracing.span("segment", attrs={"ktrdr.segment": seg.index, "ktrdr.segments": n}):
                    await self._fetch_and_merge(seg)
            except (UnknownSymbolError, GatewayUnreachableError):
                # Set before the semaphore is released, so no queued segment starts a request.
                self._aborted = True
                raise
            finally:
                self._inflight.discard(seg.index)

    async def _fetch_and_merge(self, seg: Segment) -> None:
        r = self.result
        attempt = 0
        while True:
            self._emit("fetching", "fetching", seg.index)
            try:
                df = await self._through_outages(lambda: self.fetch(seg), seg.index)
                break
            except NoDataError:
                r.segments_empty += 1
                self._done += 1
                self._emit("fetching", "no data", seg.index)
                return
            except (UnknownSymbolError, GatewayUnreachableError):
                raise
            except DisconnectedError as e:  # this segment alone kept failing: retries spent
                return self._failed(seg, e)
            except PacingError as e:
                attempt += 1
                if attempt > self.retries:
                    return self._failed(seg, e)
                self._emit("fetching", "waiting for IB pacing", seg.index, waiting_s=self.pacing_wait_s)
                if await self.cancel.sleep(self.pacing_wait_s):
                    self.cancel.raise_if_cancelled(self._where())
            except (OperationCancelledError, asyncio.CancelledError):
                raise
            except Exception as e:  # a bug or bad answer in the fetcher: this segment failed
                return self._failed(seg, e)
        if df is None or len(df) == 0:
            r.segments_empty += 1
            self._done += 1
            self._emit("fetching", "no data", seg.index)
            return
        self._emit("merging", "merging", seg.index)
        # Repair and merge on a thread, never on the loop that carries cancels and takes the other
        # segments' answers (the repair alone was ~15-30 ms of loop time per 720-bar segment, the
        # loop's largest item in python -m bench universe), and to completion even if this task is
        # cancelled: the bars are already paid for.
        fut = asyncio.ensure_future(off_loop(self._repair_and_merge, df))
        try:
            report, n_bars, added = await asyncio.shield(fut)
        except asyncio.CancelledError:
            report, n_bars, added = await fut
            self.repairs.add(report)
            self._count_fetched(seg, n_bars, added)
            raise
        self.repairs.add(report)  # here, on the loop: segments' threads never update it at once
        self._count_fetched(seg, n_bars, added)
        self._emit("fetching", "stored", seg.index)

    def _repair_and_merge(self, df: pd.DataFrame) -> tuple[RepairReport, int, int]:
        fixed, report = repair_bars(df)
        return report, len(fixed), self.store.merge(self.inst.symbol, self.tf, fixed, self.source)

    async def _through_outages(self, call: Callable[[], Awaitable[Any]], segment: int) -> Any:
        """`call()`, retried on DisconnectedError with backoff. While nothing else succeeds either
        (the gateway is away for everyone) it retries until the outage has lasted gateway_wait_s,
        then raises GatewayUnreachableError, which ends the job. A failure of this call alone while
        other requests succeed gets `retries` retries, then its DisconnectedError fails the segment."""
        attempt = 0
        successes_then: int | None = None  # the job's success count at this call's first failure
        while True:
            try:
                out = await call()
            except DisconnectedError as e:
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since = now
                if successes_then is None:
                    successes_then = self._successes
                outage = successes_then == self._successes  # nobody got through since we first failed
                down_for = now - self._down_since
                if self._aborted or (outage and down_for >= self.gateway_wait_s):
                    raise GatewayUnreachableError(
                        f"IB gateway unreachable for {down_for:.0f} s (a load waits up to "
                        f"{self.gateway_wait_s:g} s): {e.message}",
                        ib_code=e.ib_code,
                        hint="segments fetched before are stored; rerun the load once the gateway is back",
                    ) from e
                attempt += 1
                if not outage and attempt > self.retries:
                    raise
                delay = min(self.backoff_s * 2 ** (attempt - 1), 8.0)
                if outage:
                    delay = min(delay, max(self.gateway_wait_s - down_for, 0.0) + 0.01)
                self._emit("fetching", "IB gateway disconnected; reconnecting", segment, waiting_s=delay)
                if await self.cancel.sleep(delay):
                    self.cancel.raise_if_cancelled(self._where())
                continue
            self._successes += 1
            self._down_since = None  # the gateway answered: a later outage gets the whole budget again
            return out

    def _count_fetched(self, seg: Segment, n_bars: int, added: int) -> None:
        self.result.segments_fetched += 1
        self.result.bars_added += added
        self._bars += n_bars
        self._done += 1

    def _failed(self, seg: Segment, e: BaseException) -> None:
        self.result.segments_failed += 1
        self._done += 1
        if not self._first_error:
            self._first_error = f"segment {seg.index}: {e}"
        self._emit("fetching", "failed", seg.index)
