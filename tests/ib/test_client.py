"""IbClient (real ib_async) against the SimGateway: contracts, bars, errors, pacing, cancel, reconnect."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from ib_async import IB, StartupFetchNONE, Stock

from ktrdr.cancellation import CancellationToken
from ktrdr.data.calendar import DEFAULT_UNIVERSE
from ktrdr.data.timeframes import Timeframe
from ktrdr.errors import DisconnectedError, NoDataError, OperationCancelledError, UnknownSymbolError
from ktrdr.ib import IbClient, PacingRules, lower_bound_seconds
from ktrdr.ib.sim import SimGateway, generate_bars

T0 = datetime(2024, 1, 8, tzinfo=UTC)  # a Monday
_ids = itertools.count(100)


async def _wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_handshake_and_qualify_stock_and_forex_give_contract_info(client: IbClient) -> None:
    assert client.source == "sim"
    assert client.accounts == ["SIM0001"]
    aapl = await client.qualify("AAPL")
    assert (aapl.symbol, aapl.sec_type, aapl.exchange, aapl.con_id) == ("AAPL", "STK", "SMART", 265598)
    assert aapl.what_to_show == "TRADES" and aapl.time_zone == "America/New_York" and aapl.trading_hours
    fx = await client.qualify("EUR.USD")
    assert (fx.symbol, fx.sec_type, fx.exchange, fx.currency) == ("EURUSD", "CASH", "IDEALPRO", "USD")
    assert fx.what_to_show == "MIDPOINT"


async def test_unknown_symbol_raises_unknown_symbol_error(client: IbClient) -> None:
    with pytest.raises(UnknownSymbolError) as e:
        await client.qualify("ZZZZQ")
    assert e.value.ib_code == 200 and "ZZZZQ" in str(e.value)
    with pytest.raises(UnknownSymbolError):
        await client.bars("ZZZZQ", Timeframe.H1, T0, T0 + timedelta(days=2))


async def test_head_timestamp_returns_gateway_head(client: IbClient) -> None:
    assert await client.head_timestamp("AAPL") == datetime(2015, 1, 2, tzinfo=UTC)


@pytest.mark.parametrize(("symbol", "tf", "days"), [("AAPL", Timeframe.H1, 10), ("EURUSD", Timeframe.M15, 6),
                                                    ("MSFT", Timeframe.D1, 60)])
async def test_bars_match_generate_bars_exactly(client: IbClient, symbol: str, tf: Timeframe, days: int) -> None:
    start, end = T0, T0 + timedelta(days=days)
    df = await client.bars(symbol, tf, start, end)
    expected = generate_bars(DEFAULT_UNIVERSE[symbol], tf, start, end, seed=0)
    assert len(df) > 0
    pd.testing.assert_frame_equal(df, expected, check_freq=False)
    assert df.attrs["source"] == "sim"
    assert (df["high"] >= df[["open", "close"]].max(axis=1)).all()
    assert (df["low"] <= df[["open", "close"]].min(axis=1)).all()
    assert (df.index.day_of_week < 5).all()  # no weekend bars
    assert df.index.min() >= start and df.index.max() < end


async def test_overlapping_requests_give_identical_shared_bars(client: IbClient) -> None:
    a = await client.bars("AAPL", Timeframe.H1, T0, T0 + timedelta(days=7))
    b = await client.bars("AAPL", Timeframe.H1, T0 + timedelta(days=3), T0 + timedelta(days=12))
    shared = a.index.intersection(b.index)
    assert len(shared) >= 14
    pd.testing.assert_frame_equal(a.loc[shared], b.loc[shared])


async def test_bars_before_head_timestamp_are_absent() -> None:
    async with SimGateway(head_timestamps={"AAPL": T0 + timedelta(days=2)}) as gw:
        async with IbClient("127.0.0.1", gw.port, next(_ids)) as c:
            df = await c.bars("AAPL", Timeframe.H1, T0, T0 + timedelta(days=4))
    assert len(df) > 0 and df.index.min() >= T0 + timedelta(days=2)


async def test_no_data_for_symbol_raises_no_data_error(gateway: SimGateway, client: IbClient) -> None:
    gateway.no_data_for("MSFT")
    with pytest.raises(NoDataError) as e:
        await client.bars("MSFT", Timeframe.H1, T0, T0 + timedelta(days=3))
    assert e.value.ib_code == 162


async def test_burst_through_limiter_gets_zero_pacing_violations_raw_client_gets_162() -> None:
    scale = 0.05  # burst window 0.1 s, identical window 0.75 s, 10-min window 30 s
    async with SimGateway(time_scale=scale) as gw:
        async with IbClient("127.0.0.1", gw.port, next(_ids), pacing=PacingRules(time_scale=scale)) as c:
            waits: list[str] = []
            # 14 at once, > 5 per burst window: the limiter must space them however fast the host
            # answers (one after another, a loaded host's own slowness spaced them past the window)
            await asyncio.gather(*[
                c.bars("AAPL", Timeframe.H1, T0 + timedelta(days=i), T0 + timedelta(days=i + 1),
                       on_wait=lambda _s, w: waits.append(w))
                for i in range(14)
            ])  # fmt: skip
            assert gw.pacing_violations == 0
            assert gw.historical_requests == 14
            assert waits, "the limiter should have announced at least one pacing wait"
        # Same load without the limiter: the gateway enforces the rule.
        ib = IB()
        await ib.connectAsync("127.0.0.1", gw.port, next(_ids), timeout=5, readonly=True, fetchFields=StartupFetchNONE)
        try:
            (contract,) = await ib.qualifyContractsAsync(Stock("AAPL", "SMART", "USD"))
            errors: list[int] = []
            ib.errorEvent += lambda _rid, code, _msg, _c: errors.append(code)
            await asyncio.gather(*[
                ib.reqHistoricalDataAsync(contract, T0 + timedelta(days=i + 20), "1 D", "1 hour", "TRADES", True,
                                          formatDate=2, timeout=5)
                for i in range(8)
            ])  # fmt: skip
        finally:
            ib.disconnect()
        assert gw.pacing_violations >= 1
        assert 162 in errors


async def test_cancel_in_flight_request_returns_fast_and_gateway_records_cancel(
    gateway: SimGateway, client: IbClient
) -> None:
    await client.qualify("AAPL")
    gateway.latency_s = 60.0  # the answer would take a minute: only the cancel can end it sooner
    token = CancellationToken()
    task = asyncio.create_task(client.bars("AAPL", Timeframe.H1, T0, T0 + timedelta(days=5), cancel=token))
    gateway.request_event.clear()
    await asyncio.wait_for(gateway.request_event.wait(), 10.0)
    token.cancel("user asked")
    with pytest.raises(OperationCancelledError):
        await asyncio.wait_for(task, 10.0)
    await _wait_for(lambda: gateway.cancels == 1, 10.0)
    assert gateway.requests[-1].outcome == "cancelled"
    assert client.limiter.open_requests == 0


async def test_disconnect_then_client_reconnects_and_next_request_succeeds(
    gateway: SimGateway, client: IbClient
) -> None:
    await client.bars("AAPL", Timeframe.H1, T0, T0 + timedelta(days=2))
    gateway.latency_s = 0.5
    task = asyncio.create_task(client.bars("AAPL", Timeframe.H1, T0 + timedelta(days=3), T0 + timedelta(days=5)))
    gateway.request_event.clear()
    await asyncio.wait_for(gateway.request_event.wait(), 2.0)
    assert gateway.disconnect_all() == 1
    with pytest.raises(DisconnectedError):
        await asyncio.wait_for(task, 2.0)
    gateway.latency_s = 0.0
    await _wait_for(lambda: client.reconnects == 1 and client.is_connected, 5.0)
    # A different range: repeating the dropped request would rightly wait out IB's 15 s identical rule.
    df = await client.bars("AAPL", Timeframe.H1, T0 + timedelta(days=3), T0 + timedelta(days=6))
    assert len(df) > 0


async def test_gateway_gone_fails_in_flight_requests_at_once_naming_it_and_reconnects_forever() -> None:
    gw = SimGateway(latency_s=60.0)  # an answer would take a minute: only the drop can end the wait
    await gw.start()
    port = gw.port
    c = IbClient("127.0.0.1", port, next(_ids), connect_timeout=2.0, ready_timeout=0.0, max_backoff_s=0.2)
    again: SimGateway | None = None
    try:
        assert await c.start()
        await c.qualify("AAPL")
        task = asyncio.create_task(c.bars("AAPL", Timeframe.H1, T0, T0 + timedelta(days=2)))
        await asyncio.wait_for(gw.request_event.wait(), 10.0)
        await gw.stop()
        with pytest.raises(DisconnectedError) as err:
            await asyncio.wait_for(task, 30.0)
        assert f"127.0.0.1:{port}" in str(err.value)
        # While it is away: new requests fail at once, and the client says what it is doing.
        with pytest.raises(DisconnectedError) as down:
            await c.bars("AAPL", Timeframe.H1, T0 + timedelta(days=7), T0 + timedelta(days=9))
        assert "disconnected; reconnecting" in str(down.value) and c.limiter.recorded == 1
        await _wait_for(lambda: c.attempts >= 3, 30.0)  # more attempts than one connect_timeout allows
        again = SimGateway(port=port)
        await again.start()
        await _wait_for(lambda: c.is_connected, 30.0)
        assert c.state == "connected" and c.reconnects == 1
        assert len(await c.bars("AAPL", Timeframe.H1, T0 + timedelta(days=7), T0 + timedelta(days=9))) > 0
    finally:
        await c.close()
        if again is not None:
            await again.stop()


async def test_concurrent_first_requests_share_one_contract_lookup(gateway: SimGateway) -> None:
    c = IbClient("127.0.0.1", gateway.port, next(_ids), connect_timeout=5.0)
    await c.connect()
    sent: list[int] = []
    original = c.ib.client.reqContractDetails
    c.ib.client.reqContractDetails = lambda rid, contract: (sent.append(rid), original(rid, contract))
    try:
        infos = await asyncio.gather(*(c.qualify("AAPL") for _ in range(10)))
        assert len(sent) == 1 and len({i.con_id for i in infos}) == 1
    finally:
        await c.close()


async def test_connectivity_lost_fails_in_flight_and_restored_lets_requests_go(
    gateway: SimGateway, client: IbClient
) -> None:
    await client.qualify("AAPL")
    gateway.latency_s = 1.0
    task = asyncio.create_task(client.bars("AAPL", Timeframe.H1, T0, T0 + timedelta(days=2)))
    gateway.request_event.clear()
    await asyncio.wait_for(gateway.request_event.wait(), 2.0)
    gateway.connectivity_lost()
    with pytest.raises(DisconnectedError) as e:
        await asyncio.wait_for(task, 1.0)
    assert e.value.ib_code == 1100
    gateway.latency_s = 0.0
    gateway.request_event.clear()
    waiting = asyncio.create_task(client.bars("AAPL", Timeframe.H1, T0 + timedelta(days=7), T0 + timedelta(days=9)))
    with pytest.raises(TimeoutError):  # held back: nothing reaches the gateway until IB says it is back
        await asyncio.wait_for(gateway.request_event.wait(), 0.5)
    assert not waiting.done()
    gateway.connectivity_restored()
    assert len(await asyncio.wait_for(waiting, 2.0)) > 0


async def test_connect_to_closed_port_raises_disconnected_error_with_hint() -> None:
    gw = SimGateway()
    await gw.start()
    port = gw.port
    await gw.stop()
    c = IbClient("127.0.0.1", port, next(_ids), connect_timeout=0.5)
    with pytest.raises(DisconnectedError) as e:
        await c.connect()
    assert str(port) in str(e.value) and e.value.hint


def test_sim_entry_point_prints_listening_line_and_stops_on_sigterm() -> None:
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "ktrdr.ib.sim", "--port", "0", "--time-scale", "0.01"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("sim-gateway listening on 127.0.0.1:") and line.endswith("(simulated data)")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_pacing_bound_load_waits_for_the_rules_with_zero_violations() -> None:
    """62 requests need two 10-minute windows: the client must wait (and say so) and the gateway must
    never answer 162. How close to IB's lower bound it runs is measured in `python -m bench data`."""
    scale = 0.005  # 10 minutes -> 3 s
    rules = PacingRules(time_scale=scale)
    waits: list[str] = []
    async with SimGateway(time_scale=scale) as gw:
        async with IbClient("127.0.0.1", gw.port, next(_ids), pacing=rules) as c:
            await c.qualify("AAPL")
            for i in range(62):
                start = T0 + timedelta(days=i)
                await c.bars("AAPL", Timeframe.H1, start, start + timedelta(days=1),
                             on_wait=lambda _s, why: waits.append(why))
    assert gw.pacing_violations == 0
    assert len(gw.requests) >= 62 and all(r.outcome == "ok" for r in gw.requests if r.outcome != "pending")
    assert any("60 requests within" in why for why in waits)  # the 10-minute window made it wait
    assert lower_bound_seconds(62, rules) > 0


async def test_csv_replay_serves_file_bars(tmp_path) -> None:  # type: ignore[no-untyped-def]
    times = pd.date_range(T0 + timedelta(hours=14, minutes=30), periods=4, freq="1h", tz="UTC")
    pd.DataFrame(
        {"timestamp": times, "open": [1.0, 2, 3, 4], "high": [2.0, 3, 4, 5], "low": [0.5, 1, 2, 3],
         "close": [1.5, 2.5, 3.5, 4.5], "volume": [10.0, 20, 30, 40]}
    ).to_csv(tmp_path / "AAPL_1h.csv", index=False)  # fmt: skip
    async with SimGateway(csv_dir=tmp_path) as gw:
        async with IbClient("127.0.0.1", gw.port, next(_ids)) as c:
            df = await c.bars("AAPL", Timeframe.H1, T0, T0 + timedelta(days=1))
            synthetic = await c.bars("MSFT", Timeframe.H1, T0, T0 + timedelta(days=1))  # no file: synthetic
    assert list(df.index) == list(times) and df["close"].tolist() == [1.5, 2.5, 3.5, 4.5]
    assert len(synthetic) == 7


async def test_unknown_message_ids_are_ignored_and_counted(gateway: SimGateway) -> None:
    ib = IB()
    await ib.connectAsync("127.0.0.1", gateway.port, next(_ids), timeout=5, readonly=True,
                          fetchFields=StartupFetchNONE)  # fmt: skip
    try:
        ib.client.reqMarketDataType(3)  # message id 59: not simulated
        assert await asyncio.wait_for(ib.reqCurrentTimeAsync(), 2.0)  # the connection still works
        assert gateway.unknown_messages.get(59) == 1
    finally:
        ib.disconnect()
