"""TWS wire protocol, server side: framing, message ids, field encoding and request parsing.

Only the subset ib_async uses for a read-only historical-data client. Field orders follow
ib_async 2.1's client.py (what it sends) and decoder.py (what it expects back) at SERVER_VERSION.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

# 176 is inside ib_async's accepted range (157..178) and >= 166, so error messages carry the
# advancedOrderRejectJson field and contractDetails uses the layout without a version field.
SERVER_VERSION = 176

# Incoming (client -> gateway) message ids.
IN_REQ_HISTORICAL_DATA = 20
IN_CANCEL_HISTORICAL_DATA = 25
IN_REQ_CONTRACT_DETAILS = 9
IN_REQ_IDS = 8
IN_REQ_MANAGED_ACCTS = 17
IN_REQ_CURRENT_TIME = 49
IN_REQ_POSITIONS = 61
IN_START_API = 71
IN_REQ_HEAD_TIMESTAMP = 87
IN_CANCEL_HEAD_TIMESTAMP = 90

# Outgoing (gateway -> client) message ids.
OUT_ERROR = 4
OUT_NEXT_VALID_ID = 9
OUT_CONTRACT_DATA = 10
OUT_MANAGED_ACCTS = 15
OUT_HISTORICAL_DATA = 17
OUT_CURRENT_TIME = 49
OUT_CONTRACT_DATA_END = 52
OUT_POSITION_END = 62
OUT_HEAD_TIMESTAMP = 88

CONTRACT_FIELDS = 12  # conId, symbol, secType, lastTradeDate, strike, right, multiplier, exchange,
# primaryExchange, currency, localSymbol, tradingClass — how ib_async serialises a Contract


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def encode(*fields: object) -> bytes:
    """One framed message: every field as text followed by NUL."""
    parts: list[str] = []
    for f in fields:
        if f is None:
            parts.append("")
        elif isinstance(f, bool):
            parts.append("1" if f else "0")
        else:
            parts.append(str(f))
    return frame(("\0".join(parts) + "\0").encode())


def split_frames(buffer: bytearray) -> Iterator[list[str]]:
    """Pop every complete frame off `buffer` and yield its fields (the trailing empty one dropped)."""
    while len(buffer) >= 4:
        (size,) = struct.unpack(">I", buffer[:4])
        if len(buffer) < 4 + size:
            return
        payload = bytes(buffer[4 : 4 + size])
        del buffer[: 4 + size]
        fields = payload.decode(errors="backslashreplace").split("\0")
        if fields and fields[-1] == "":
            fields.pop()
        yield fields


@dataclass(frozen=True)
class WireContract:
    con_id: int
    symbol: str
    sec_type: str
    exchange: str
    primary_exchange: str
    currency: str
    local_symbol: str

    @classmethod
    def parse(cls, f: list[str]) -> WireContract:
        return cls(
            con_id=int(f[0] or 0),
            symbol=f[1],
            sec_type=f[2],
            exchange=f[7],
            primary_exchange=f[8],
            currency=f[9],
            local_symbol=f[10],
        )


@dataclass(frozen=True)
class HistoricalRequest:
    req_id: int
    contract: WireContract
    end: str
    bar_size: str
    duration: str
    use_rth: bool
    what_to_show: str
    format_date: int
    keep_up_to_date: bool

    @classmethod
    def parse(cls, fields: list[str]) -> HistoricalRequest:
        # [20, reqId, 12 contract fields, includeExpired, end, barSize, duration, useRTH, whatToShow,
        #  ..., formatDate, keepUpToDate, chartOptions]. ib_async 2.1 sends whatToShow twice, the
        # reference API once: read the head from the front and the tail from the back to accept both.
        req_id = int(fields[1])
        c = WireContract.parse(fields[2 : 2 + CONTRACT_FIELDS])
        i = 2 + CONTRACT_FIELDS + 1  # skip includeExpired
        end, bar_size, duration, use_rth, what = fields[i : i + 5]
        return cls(
            req_id=req_id,
            contract=c,
            end=end,
            bar_size=bar_size,
            duration=duration,
            use_rth=use_rth == "1",
            what_to_show=what,
            format_date=int(fields[-3] or 1),
            keep_up_to_date=fields[-2] == "1",
        )


@dataclass(frozen=True)
class HeadTimestampRequest:
    req_id: int
    contract: WireContract
    use_rth: bool
    what_to_show: str
    format_date: int

    @classmethod
    def parse(cls, fields: list[str]) -> HeadTimestampRequest:
        # [87, reqId, 12 contract fields, includeExpired, useRTH, whatToShow, formatDate]
        c = WireContract.parse(fields[2 : 2 + CONTRACT_FIELDS])
        i = 2 + CONTRACT_FIELDS + 1
        return cls(
            req_id=int(fields[1]),
            contract=c,
            use_rth=fields[i] == "1",
            what_to_show=fields[i + 1],
            format_date=int(fields[i + 2] or 1),
        )


def parse_contract_details_request(fields: list[str]) -> tuple[int, WireContract]:
    # [9, 8, reqId, 12 contract fields, includeExpired, secIdType, secId, (issuerId >= 176)]
    return int(fields[2]), WireContract.parse(fields[3 : 3 + CONTRACT_FIELDS])


def parse_end_datetime(s: str, now: datetime) -> datetime:
    """IB endDateTime: "" (now), "YYYYMMDD HH:MM:SS UTC", "YYYYMMDD-HH:MM:SS" (UTC),
    "YYYYMMDD HH:MM:SS <tz name>", "YYYYMMDD HH:MM:SS" (gateway-local time: UTC here)."""
    s = s.strip()
    if not s:
        return now
    if "-" in s[:9]:
        return datetime.strptime(s, "%Y%m%d-%H:%M:%S").replace(tzinfo=UTC)
    parts = s.split()
    if len(parts) == 1:
        return datetime.strptime(parts[0], "%Y%m%d").replace(tzinfo=UTC) + timedelta(days=1)
    dt = datetime.strptime(parts[0] + " " + parts[1], "%Y%m%d %H:%M:%S")
    tz = ZoneInfo(parts[2]) if len(parts) > 2 else UTC
    return dt.replace(tzinfo=tz).astimezone(UTC)


_DURATION_UNITS = {"S": 1, "D": 86400, "W": 7 * 86400, "M": 30 * 86400, "Y": 365 * 86400}


def parse_duration(s: str) -> timedelta:
    """IB durationStr "N S|D|W|M|Y" as calendar time (the sim's simplification of trading days)."""
    n, unit = s.split()
    if unit.upper() not in _DURATION_UNITS or int(n) <= 0:
        raise ValueError(f"invalid duration {s!r}")
    return timedelta(seconds=int(n) * _DURATION_UNITS[unit.upper()])


def format_ib_time(t: datetime, format_date: int) -> str:
    """A timestamp as IB sends it: epoch seconds for formatDate=2, else 'YYYYMMDD HH:MM:SS UTC'."""
    if format_date == 2:
        return str(int(t.timestamp()))
    return t.astimezone(UTC).strftime("%Y%m%d %H:%M:%S UTC")
