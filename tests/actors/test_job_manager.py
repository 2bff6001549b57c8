"""Data loads end to end: CLI-side client -> orchestrator -> job-manager -> ib actor (real ib_async)
-> simulated gateway (TWS wire protocol), with bars checked against the gateway's own generator and
read back from the object bucket BARS (the store of record); two loads of one series queue."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from actors.job_manager import JobManager
from events import subjects
from events.messages import DataContext, LoadData, OperationProgress
from ktrdr.data.calendar import lookup
from ktrdr.ib.sim.data import generate_bars
from ktrdr.transport.objects import BARS, stat
from tests.helpers import eventually, scrape, value, wait_for_event, wait_terminal


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def expected(symbol: str, tf: str, start: datetime, end: datetime) -> pd.DataFrame:
    return generate_bars(lookup(symbol), tf, start, end, seed=0)


async def load(client, symbol: str, tf: str, mode: str, start: datetime | None = None,
               end: datetime | None = None, timeout: float = 60):
    cmd = LoadData(op_id=subjects.new_op_id("data"), symbol=symbol, timeframe=tf, mode=mode, start=start, end=end)
    await client.submit(cmd)
    return cmd, await wait_terminal(client, cmd.op_id, timeout=timeout)


def assert_same_bars(stored: pd.DataFrame, want: pd.DataFrame) -> None:
    assert not stored.index.duplicated().any()
    assert stored.index.is_monotonic_increasing
    missing, extra = want.index.difference(stored.index), stored.index.difference(want.index)
    assert len(missing) == 0 and len(extra) == 0, (f"{len(missing)} missing, e.g. {list(missing[:3])}; "
                                                   f"{len(extra)} extra, e.g. {list(extra[:3])}")
    pd.testing.assert_frame_equal(stored[want.columns], want, check_freq=False, check_names=False)


async def test_full_load_over_many_segments_stores_exactly_the_gateways_bars(client, data_stack, gateway):
    start, end = utc(2023, 1, 1), utc(2023, 9, 1)
    cmd, view = await load(client, "AAPL", "1h", "full", start, end)
    assert view.status == "completed", view.error
    r = view.result
    assert r["segments_planned"] >= 8 and r["segments_fetched"] == r["segments_planned"]
    assert r["segments_failed"] == 0 and r["simulated"] is True
    want = expected("AAPL", "1h", start, end)
    assert r["bars_added"] == len(want)
    assert_same_bars(await data_stack.read("AAPL", "1h"), want)
    assert (await data_stack.metadata("AAPL", "1h")).simulated
    assert gateway.pacing_violations == 0
    events = await client.events(cmd.op_id)
    msgs = [e.progress.message for e in events if isinstance(e, OperationProgress)]
    assert any(m.startswith("Loading AAPL 1h data (full mode) [") for m in msgs)
    ctxs = [e.progress.context for e in events if isinstance(e, OperationProgress)
            and isinstance(e.progress.context, DataContext) and e.progress.context.segment_count]
    assert ctxs and ctxs[-1].segment_count == r["segments_planned"] and ctxs[-1].source == "sim"


async def test_tail_update_fetches_only_the_new_bars(client, data_stack, gateway):
    _, first = await load(client, "MSFT", "1h", "full", utc(2024, 1, 2), utc(2024, 2, 1))
    assert first.status == "completed", first.error
    requests_before = gateway.historical_requests
    _, tail = await load(client, "MSFT", "1h", "tail", None, utc(2024, 2, 15))
    assert tail.status == "completed", tail.error
    new = expected("MSFT", "1h", utc(2024, 2, 1), utc(2024, 2, 15))
    assert tail.result["bars_added"] == len(new)
    assert gateway.historical_requests - requests_before == tail.result["segments_fetched"] == 1
    assert_same_bars(await data_stack.read("MSFT", "1h"), expected("MSFT", "1h", utc(2024, 1, 2), utc(2024, 2, 15)))


async def test_backfill_fetches_history_before_the_stored_range(client, data_stack):
    end = utc(2024, 3, 1)
    _, first = await load(client, "GOOGL", "1d", "full", utc(2023, 6, 1), end)
    assert first.status == "completed", first.error
    _, back = await load(client, "GOOGL", "1d", "backfill", utc(2021, 1, 1), end)
    assert back.status == "completed", back.error
    assert back.result["bars_added"] == len(expected("GOOGL", "1d", utc(2021, 1, 1), utc(2023, 6, 1)))
    assert_same_bars(await data_stack.read("GOOGL", "1d"), expected("GOOGL", "1d", utc(2021, 1, 1), end))


async def test_internal_gaps_are_found_and_filled(client, data_stack):
    start, end = utc(2023, 3, 1), utc(2023, 6, 1)
    want = expected("AAPL", "1h", start, end)
    holey = want.drop(want.index[100:180]).drop(want.index[400:420])
    await data_stack.merge("AAPL", "1h", holey, "sim")
    _, view = await load(client, "AAPL", "1h", "full", start, end)
    assert view.status == "completed", view.error
    assert view.result["gaps_found"] == 2 and view.result["bars_added"] == 100
    assert_same_bars(await data_stack.read("AAPL", "1h"), want)


@pytest.mark.parametrize("time_scale", [0.5])
async def test_load_hitting_pacing_limits_completes_without_any_162(client, data_stack, gateway):
    # 1m bars: one request per day. At half IB's windows (6 requests per contract in 1 s) 12 trading
    # days at 5 segments in flight break the burst rule unless the ib actor's PacingLimiter holds them.
    start, end = utc(2024, 4, 1), utc(2024, 4, 17)
    url = next(hb.metrics_url for hb in await client.live_actors() if hb.role == "ib")
    before = await scrape(url)
    cmd, view = await load(client, "AAPL", "1m", "full", start, end, timeout=120)
    assert view.status == "completed", view.error
    assert view.result["segments_fetched"] >= 12
    assert gateway.pacing_violations == 0
    # /metrics: the bars requests, and the seconds they waited for pacing
    after = await scrape(url)
    assert value(after, "ktrdr_ib_requests_total", verb="bars", outcome="ok") >= value(
        before, "ktrdr_ib_requests_total", verb="bars", outcome="ok") + 12
    assert value(after, "ktrdr_ib_pacing_wait_seconds_total", verb="bars") > value(
        before, "ktrdr_ib_pacing_wait_seconds_total", verb="bars")
    assert_same_bars(await data_stack.read("AAPL", "1m"), expected("AAPL", "1m", start, end))
    events = await client.events(cmd.op_id)
    states = [e.progress.context.state or "" for e in events if isinstance(e, OperationProgress)
              and isinstance(e.progress.context, DataContext)]
    assert any("for IB pacing" in s for s in states), f"pacing waits are reported as visible state: {set(states)}"


async def test_unknown_symbol_fails_with_a_clear_message(client, data_stack):
    _, view = await load(client, "NOSUCH", "1h", "tail")
    assert view.status == "failed"
    assert view.error_code == "unknown_symbol" and "NOSUCH" in view.error
    assert await data_stack.metadata("NOSUCH", "1h") is None


async def test_gateway_disconnect_mid_load_reconnects_without_missing_or_duplicate_bars(client, data_stack, gateway):
    gateway.latency_s = 0.3
    start, end = utc(2022, 1, 1), utc(2023, 1, 1)
    cmd = LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", timeframe="1h", mode="full", start=start, end=end)
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: isinstance(v.context, DataContext)
                         and v.context.segment_index >= 2, timeout=60)
    assert gateway.disconnect_all() >= 1
    view = await wait_terminal(client, cmd.op_id, timeout=120)
    assert view.status == "completed", view.error
    assert_same_bars(await data_stack.read("AAPL", "1h"), expected("AAPL", "1h", start, end))


async def test_cancel_mid_load_stops_cancels_inflight_request_and_keeps_fetched_segments(client, data_stack,
                                                                                          gateway):
    gateway.latency_s = 0.2
    start, end = utc(2021, 1, 1), utc(2023, 1, 1)
    cmd = LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", timeframe="1h", mode="full", start=start, end=end)
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: isinstance(v.context, DataContext)
                         and v.context.bars_fetched > 0, timeout=60)
    # From now on the gateway takes a minute per answer: a request it is working on when the cancel
    # arrives can only end early through the cancel.
    gateway.latency_s = 60.0
    seen = len(gateway.requests)
    pending = await eventually(lambda: [r for r in gateway.requests[seen:] if r.answered_at is None], timeout=30)
    await client.cancel(cmd.op_id)
    view = await wait_terminal(client, cmd.op_id, timeout=30)  # far less than the minute an answer takes
    assert view.status == "cancelled" and view.where and "segment" in view.where
    # cancelHistoricalData reached the gateway: no request is left running there, and the ones in
    # flight when we cancelled were cancelled, not answered.
    await eventually(lambda: not [r for r in gateway.requests if r.outcome == "pending"], timeout=2)
    assert all(r.outcome == "cancelled" for r in pending), [r.outcome for r in pending]
    assert gateway.cancels >= len(pending)
    kept = await data_stack.read("AAPL", "1h")
    assert 0 < len(kept) < len(expected("AAPL", "1h", start, end))
    # The next load fetches only what is missing and ends with the full series.
    gateway.latency_s = 0.0
    _, again = await load(client, "AAPL", "1h", "full", start, end, timeout=120)
    assert again.status == "completed", again.error
    assert again.result["bars_added"] == len(expected("AAPL", "1h", start, end)) - len(kept)
    assert_same_bars(await data_stack.read("AAPL", "1h"), expected("AAPL", "1h", start, end))


async def test_two_loads_of_one_series_queue_and_both_store_every_bar(client, data_stack, gateway):
    gateway.latency_s = 0.05
    a = LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", timeframe="1h", mode="full",
                 start=utc(2023, 1, 1), end=utc(2023, 7, 1))
    b = LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", timeframe="1h", mode="full",
                 start=utc(2023, 4, 1), end=utc(2023, 10, 1))
    await client.submit(a)
    await client.submit(b)
    va, vb = await wait_terminal(client, a.op_id, timeout=120), await wait_terminal(client, b.op_id, timeout=120)
    assert va.status == vb.status == "completed", (va.error, vb.error)
    want = expected("AAPL", "1h", utc(2023, 1, 1), utc(2023, 10, 1))
    assert_same_bars(await data_stack.read("AAPL", "1h"), want)
    # Never merged concurrently: whichever came second waited for the first, said so, and fetched only
    # what the first had not stored (so no bar was fetched twice and none was lost).
    assert va.result["bars_added"] + vb.result["bars_added"] == len(want)
    waits = {}
    for cmd, other in ((a, b), (b, a)):
        msgs = [e.progress.message for e in await client.events(cmd.op_id) if isinstance(e, OperationProgress)]
        waits[cmd.op_id] = [m for m in msgs if f"waiting for {other.op_id} loading the same series" in m]
    assert sum(bool(w) for w in waits.values()) == 1, waits


async def test_a_long_load_writes_the_series_while_it_runs(client, data_stack, gateway, monkeypatch):
    monkeypatch.setattr(JobManager, "flush_every_segments", 2)
    gateway.latency_s = 0.2
    start, end = utc(2021, 1, 1), utc(2023, 1, 1)
    cmd = LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", timeframe="1h", mode="full", start=start, end=end)
    await client.submit(cmd)
    stored = await eventually_async(lambda: stat(client.js, BARS, "AAPL/1h"), timeout=60)
    assert not (await client.view(cmd.op_id)).terminal  # written before the load ended
    assert stored.size > 0
    view = await wait_terminal(client, cmd.op_id, timeout=120)
    assert view.status == "completed", view.error
    assert view.result["writes"] >= 2 and view.result["digest"] == (await stat(client.js, BARS, "AAPL/1h")).digest
    assert_same_bars(await data_stack.read("AAPL", "1h"), expected("AAPL", "1h", start, end))


async def eventually_async(check, timeout: float = 10.0, interval: float = 0.05):
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(interval)
