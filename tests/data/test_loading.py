"""DataLoadingJob scenarios with an in-process fake IB fetch function (no NATS, no gateway)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from events.messages import DataContext, ProgressState
from ktrdr.cancellation import CancellationToken
from ktrdr.data.calendar import DEFAULT_UNIVERSE, expected_bar_starts
from ktrdr.data.loading import DataLoadingJob
from ktrdr.data.planning import Segment
from ktrdr.data.store import DataStore
from ktrdr.errors import (
    DataError,
    DisconnectedError,
    IbError,
    NoDataError,
    OperationCancelledError,
    PacingError,
    UnknownSymbolError,
)
from tests.data.conftest import make_bars

NOW = pd.Timestamp("2024-06-28 21:00", tz="UTC")
HEAD = pd.Timestamp("2024-06-10", tz="UTC")
AAPL = DEFAULT_UNIVERSE["AAPL"]


class FakeIB:
    """Serves calendar bars per segment; can block segments, fail them, and measures overlap."""

    def __init__(self, tf: str = "1m") -> None:
        self.tf = tf
        self.calls: list[Segment] = []
        self.active = 0
        self.max_active = 0
        self.block: set[int] = set()  # segment indexes that wait until cancelled
        self.errors: dict[int, list[IbError]] = {}  # raised in order, then bars are served
        self.blocked = 0
        self.cancelled = 0
        self.changed = asyncio.Event()
        self.hold_until_overlap = 0  # >0: each fetch waits until this many are in flight together

    async def head(self) -> datetime | None:
        return HEAD.to_pydatetime()

    async def fetch(self, seg: Segment) -> pd.DataFrame:
        self.calls.append(seg)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.changed.set()
        try:
            while self.hold_until_overlap and self.max_active < self.hold_until_overlap:
                self.changed.clear()
                await asyncio.wait_for(self.changed.wait(), timeout=5)
            if self.errors.get(seg.index):
                raise self.errors[seg.index].pop(0)
            if seg.index in self.block:
                self.blocked += 1
                self.changed.set()
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    self.cancelled += 1
                    raise
            return make_bars(expected_bar_starts(AAPL, self.tf, seg.start, seg.end))
        finally:
            self.active -= 1

    async def wait_for(self, cond: object) -> None:
        while not cond():  # type: ignore[operator]
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), timeout=5)


def job(store: DataStore, ib: FakeIB, token: CancellationToken | None = None, **kw: object) -> DataLoadingJob:
    args: dict[str, object] = dict(
        store=store,
        instrument="AAPL",
        timeframe=ib.tf,
        mode="full",
        start=None,
        end=None,
        fetch=ib.fetch,
        head_timestamp=ib.head,
        cancel=token or CancellationToken(),
        now=NOW,
        source="sim",
        backoff_s=0.01,
        pacing_wait_s=0.01,
    )
    args.update(kw)
    return DataLoadingJob(**args)  # type: ignore[arg-type]


def expected_count(start: pd.Timestamp = HEAD, end: pd.Timestamp = NOW) -> int:
    return len(expected_bar_starts(AAPL, "1m", start, end))


async def test_full_load_stores_every_expected_bar_and_reports_progress(tmp_path: Path) -> None:
    store, ib = DataStore(tmp_path), FakeIB()
    seen: list[ProgressState] = []
    result = await job(store, ib, on_progress=seen.append).run()
    assert result.bars_total == result.bars_added == expected_count()
    assert result.segments_planned == result.segments_fetched == len(ib.calls) > 4
    assert result.segments_failed == 0 and result.simulated and result.source == "sim"
    assert all(s.end - s.start <= pd.Timedelta(days=1) for s in ib.calls)
    assert seen[-1].phase == "done" and seen[-1].percentage == 100
    n = result.segments_planned
    assert seen[-1].message == f"Loading AAPL 1m data (full mode) [{n}/{n}]"
    ctx = seen[-1].context
    assert isinstance(ctx, DataContext) and ctx.bars_fetched == result.bars_total
    assert ctx.segments_done == ctx.segment_count == n
    assert result.to_dict()["requested_start"] == HEAD.isoformat()


async def test_second_full_load_fetches_nothing(tmp_path: Path) -> None:
    store, ib = DataStore(tmp_path), FakeIB()
    await job(store, ib).run()
    again = FakeIB()
    result = await job(store, again).run()
    assert again.calls == [] and result.bars_added == 0 and result.gaps_found == 0


async def test_segments_are_fetched_concurrently_up_to_the_limit(tmp_path: Path) -> None:
    store, ib = DataStore(tmp_path), FakeIB()
    ib.hold_until_overlap = 3  # a sequential loader would time out here
    await job(store, ib, max_concurrency=3).run()
    assert ib.max_active == 3


async def test_cancel_mid_load_keeps_fetched_segments_and_rerun_fetches_only_the_rest(tmp_path: Path) -> None:
    store, ib, token = DataStore(tmp_path), FakeIB(), CancellationToken()
    ib.block = {3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}
    run = asyncio.create_task(job(store, ib, token, max_concurrency=2).run())
    await ib.wait_for(lambda: ib.blocked == 2)
    token.cancel("user pressed Ctrl+C")
    with pytest.raises(OperationCancelledError) as e:
        await asyncio.wait_for(run, timeout=5)
    assert e.value.where.startswith("segment 3/")
    assert ib.cancelled == 2  # the in-flight requests were cancelled, not abandoned
    first_two = ib.calls[:2]
    kept = store.read("AAPL", "1m")
    assert len(kept) == expected_count(first_two[0].start, first_two[1].end) > 0

    rerun = FakeIB()
    result = await job(store, rerun).run()
    assert all(s.start >= first_two[1].end for s in rerun.calls)
    assert result.bars_total == expected_count()


async def test_unknown_symbol_fails_the_whole_job_fast(tmp_path: Path) -> None:
    store, ib = DataStore(tmp_path), FakeIB()
    ib.block = set(range(2, 50))
    ib.errors = {1: [UnknownSymbolError("no security definition for AAPL", ib_code=200)]}
    with pytest.raises(UnknownSymbolError):
        await asyncio.wait_for(job(store, ib, max_concurrency=4).run(), timeout=5)
    assert len(ib.calls) <= 4  # no segment was started after the error
    assert ib.active == 0 and ib.cancelled == ib.blocked  # in-flight requests were cancelled
    assert store.read("AAPL", "1m").empty


async def test_retryable_errors_are_retried_and_no_data_counts_as_empty(tmp_path: Path) -> None:
    store, ib = DataStore(tmp_path), FakeIB()
    ib.errors = {
        1: [DisconnectedError("connectivity lost", ib_code=1100)],
        2: [PacingError("pacing violation", ib_code=162), PacingError("pacing violation", ib_code=162)],
        3: [NoDataError("HMDS query returned no data", ib_code=162)],
    }
    result = await job(store, ib).run()
    assert result.segments_failed == 0 and result.segments_empty == 1
    assert result.segments_fetched == result.segments_planned - 1
    assert len(ib.calls) == result.segments_planned + 3


async def test_segment_failing_after_retries_fails_the_job_but_keeps_the_rest(tmp_path: Path) -> None:
    store, ib = DataStore(tmp_path), FakeIB()
    ib.errors = {2: [DisconnectedError("connectivity lost", ib_code=1100) for _ in range(10)]}
    with pytest.raises(DataError, match=r"1 of \d+ segments failed.*are stored"):
        await job(store, ib, retries=2).run()
    assert len(store.read("AAPL", "1m")) > 0
    rerun = FakeIB()
    await job(store, rerun).run()
    assert len(rerun.calls) == 1  # only the failed segment is fetched again


async def test_cancel_interrupts_a_pacing_wait(tmp_path: Path) -> None:
    store, ib, token = DataStore(tmp_path), FakeIB(), CancellationToken()
    ib.errors = {1: [PacingError("pacing violation", ib_code=162)]}

    def on_progress(p: ProgressState) -> None:
        assert isinstance(p.context, DataContext)
        if p.context.state == "waiting for IB pacing":
            assert p.context.waiting_s == 600
            token.cancel()

    with pytest.raises(OperationCancelledError):
        await asyncio.wait_for(
            job(store, ib, token, max_concurrency=1, pacing_wait_s=600, on_progress=on_progress).run(), timeout=5
        )


async def test_local_mode_never_fetches(tmp_path: Path) -> None:
    store, ib = DataStore(tmp_path), FakeIB()
    result = await job(store, ib, mode="local").run()
    assert ib.calls == [] and result.segments_planned == 0 and result.bars_total == 0
