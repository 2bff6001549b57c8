"""Historical bars: one IB request per call, paced, cancellable, returned as a clean DataFrame.

Callers split long ranges by `max_request(timeframe)`; this module sends exactly one
reqHistoricalData covering [start, end) (endDateTime=end, durationStr rounded up by
`ib_duration_str`) and keeps only the bars that start inside the range.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pandas as pd
from ib_async import IB, BarDataList, Contract

from ktrdr.cancellation import CancellationToken
from ktrdr.data.calendar import Instrument
from ktrdr.data.timeframes import Timeframe, ib_bar_size, ib_duration_str, max_request
from ktrdr.errors import ValidationError
from ktrdr.ib.pacing import Gate, OnWait, PacingLimiter, RequestKey
from ktrdr.ib.requests import RequestTracker

COLUMNS = ["open", "high", "low", "close", "volume"]


def empty_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {c: pd.Series(dtype="float64") for c in COLUMNS},
        index=pd.DatetimeIndex([], tz=UTC, name="timestamp"),
    )


def to_utc(t: datetime) -> datetime:
    """Naive datetimes are taken as UTC (the project's convention)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def ib_end_datetime(end: datetime) -> str:
    # The explicit "UTC" suffix spares IB from guessing the gateway's local time zone.
    return to_utc(end).strftime("%Y%m%d %H:%M:%S UTC")


def request_key(contract: Contract, what_to_show: str, end: str, duration: str, bar_size: str,
                use_rth: bool) -> RequestKey:  # fmt: skip
    return RequestKey(
        contract=str(contract.conId or contract.localSymbol or contract.symbol),
        exchange=contract.exchange,
        what_to_show=what_to_show,
        params=f"{end}|{duration}|{bar_size}|{use_rth}",
    )


def _bar_time(d: datetime | date, tf: Timeframe) -> pd.Timestamp:
    """IB dates daily and weekly bars "YYYYMMDD" (a date) and intraday bars by instant; the project
    stamps daily bars at the date's 00:00 UTC and weekly bars at that week's Monday 00:00 UTC."""
    if isinstance(d, datetime):
        ts = pd.Timestamp(to_utc(d))
    else:
        ts = pd.Timestamp(datetime(d.year, d.month, d.day, tzinfo=UTC))
    if tf == Timeframe.W1:
        ts = ts.normalize() - pd.Timedelta(days=ts.day_of_week)
    return ts


def bars_frame(bars: list, tf: Timeframe, start: datetime, end: datetime) -> pd.DataFrame:
    """ib_async BarData -> UTC-indexed float OHLCV, only bars starting in [start, end), sorted, unique."""
    if not bars:
        return empty_frame()
    idx = pd.DatetimeIndex([_bar_time(b.date, tf) for b in bars], name="timestamp").as_unit("ns")
    df = pd.DataFrame(
        {
            "open": [b.open for b in bars],
            "high": [b.high for b in bars],
            "low": [b.low for b in bars],
            "close": [b.close for b in bars],
            # IB sends -1 as "no volume" (MIDPOINT / BID bars): store 0 so volume stays >= 0.
            "volume": [max(b.volume, 0.0) for b in bars],
        },
        index=idx,
        dtype="float64",
    )
    df = df[~df.index.duplicated(keep="last")].sort_index()
    return df[(df.index >= pd.Timestamp(to_utc(start))) & (df.index < pd.Timestamp(to_utc(end)))]


async def fetch_bars(
    ib: IB,
    tracker: RequestTracker,
    limiter: PacingLimiter,
    contract: Contract,
    inst: Instrument,
    tf: Timeframe,
    start: datetime,
    end: datetime,
    *,
    timeout: float,
    cancel: CancellationToken | None = None,
    on_wait: OnWait | None = None,
    gate: Gate | None = None,
    owner: str = "",
) -> pd.DataFrame:
    """One paced historical request for [start, end). `df.attrs["pacing_wait_s"]` says how long the
    pacing limiter held it back; `gate` may drop it right before it takes its slot (PacingLimiter)."""
    start, end = to_utc(start), to_utc(end)
    if end <= start:
        raise ValidationError(f"empty range: start {start:%Y-%m-%d %H:%M} is not before end {end:%Y-%m-%d %H:%M}")
    span = end - start
    if span > max_request(tf) + timedelta(seconds=1):
        raise ValidationError(
            f"{tf} request of {span} for {inst.symbol} is longer than IB allows in one request "
            f"({max_request(tf)})",
            hint="split the range into segments of at most max_request(timeframe)",
        )
    duration = ib_duration_str(span)
    end_str = ib_end_datetime(end)
    use_rth = inst.kind == "stock"
    what = inst.what_to_show
    bar_size = ib_bar_size(tf)
    key = request_key(contract, what, end_str, duration, bar_size, use_rth)
    waited = await limiter.acquire(key, on_wait=on_wait, cancel=cancel, gate=gate, owner=owner)
    try:
        container = BarDataList()
        container.reqId = -1
        container.contract = contract

        def send(req_id: int) -> None:
            container.reqId = req_id
            ib.client.reqHistoricalData(
                req_id, contract, end_str, duration, bar_size, what, use_rth, 2, False, []
            )

        bars = await tracker.run(
            send,
            symbol=inst.symbol,
            what=f"{tf} bars {start:%Y-%m-%d %H:%M}..{end:%Y-%m-%d %H:%M}",
            timeout=timeout,
            contract=contract,
            container=container,
            cancel=cancel,
            on_abandon=ib.client.cancelHistoricalData,
        )
    finally:
        limiter.release(key)
    df = bars_frame(list(bars), tf, start, end)
    df.attrs["pacing_wait_s"] = waited
    return df
