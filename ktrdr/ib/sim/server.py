"""SimGateway: an asyncio TCP server that speaks the TWS wire protocol like IB Gateway, offline.

Real clients (ib_async, this project's IbClient) connect to it unchanged. It serves a configurable
universe of instruments with deterministic synthetic bars (or bars replayed from CSV files), enforces
IB's historical pacing rules (answering error 162 like IB does), delays answers by a configurable
latency, honours cancelHistoricalData, and offers fault injection (dropped connections, "no data",
connectivity loss) plus counters and a per-request log for tests and benchmarks.

Its account is named "SIM0001": clients recognise a simulated gateway by the "SIM" prefix and mark
the data they get from it as simulated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd

from ktrdr.data.calendar import DEFAULT_UNIVERSE, Instrument, normalize_symbol
from ktrdr.data.timeframes import parse_timeframe
from ktrdr.errors import ValidationError
from ktrdr.ib.pacing import PacingRules, RequestKey
from ktrdr.ib.sim import protocol as p
from ktrdr.ib.sim.data import CsvBars, generate_bars, trading_hours
from ktrdr.ib.sim.enforcer import PacingEnforcer

log = logging.getLogger("ktrdr.ib.sim")

ACCOUNT = "SIM0001"
DEFAULT_HEAD_STOCK = datetime(2015, 1, 2, tzinfo=UTC)
DEFAULT_HEAD_FOREX = datetime(2010, 1, 4, tzinfo=UTC)

MSG_PACING = "Historical Market Data Service error message:Historical data request pacing violation"
MSG_NO_DATA = "Historical Market Data Service error message:HMDS query returned no data: {what}"
MSG_CANCELLED = "Historical Market Data Service error message:API historical data query cancelled: {req_id}"
MSG_NO_SECDEF = "No security definition has been found for the request"


@dataclass
class RequestRecord:
    """One historical request as the gateway saw it."""

    at: float  # time.monotonic() on arrival
    wall: datetime
    client_id: int
    req_id: int
    symbol: str
    bar_size: str
    duration: str
    end: str
    what_to_show: str
    outcome: str = "pending"  # ok | pacing | no_data | unknown_symbol | invalid | cancelled | dropped
    bars: int = 0
    answered_at: float | None = None


@dataclass(eq=False)  # identity hash: clients live in a set
class _Client:
    writer: asyncio.StreamWriter
    client_id: int = -1
    inflight: dict[int, asyncio.Task[None]] = field(default_factory=dict)

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)


class SimGateway:
    """A simulated IB Gateway. `await start()`, connect to `.port`, `await stop()`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        universe: Mapping[str, Instrument] | None = None,
        latency_s: float = 0.0,
        seed: int = 0,
        csv_dir: str | Path | None = None,
        time_scale: float = 1.0,
        pacing: bool = True,
        head_timestamps: Mapping[str, datetime] | None = None,
        account: str = ACCOUNT,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.universe: dict[str, Instrument] = {
            normalize_symbol(k): v for k, v in (universe or DEFAULT_UNIVERSE).items()
        }
        self.latency_s = latency_s  # mutable: tests change it between requests
        self.seed = seed
        self.csv = CsvBars(csv_dir) if csv_dir else None
        self.rules = PacingRules(time_scale=time_scale)
        self.pacing = pacing
        self.head_timestamps = {normalize_symbol(k): v for k, v in (head_timestamps or {}).items()}
        self._hours: dict[tuple[str, str, date], str] = {}  # trading hours by (symbol, tz, local day)
        self.account = account
        self._enforcer = PacingEnforcer(self.rules)
        self._server: asyncio.Server | None = None
        self._clients: set[_Client] = set()
        self._no_data: set[str] = set()
        self._next_order_id = 1
        # Counters and records for tests and benchmarks.
        self.historical_requests = 0
        self.pacing_violations = 0
        self.cancels = 0
        self.connections = 0
        self.requests: list[RequestRecord] = []
        self.unknown_messages: dict[int, int] = {}
        self.request_event = asyncio.Event()  # set on every historical request arrival (tests wait on it)

    # --- lifecycle ----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._requested_port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self._requested_port)
        log.info("sim-gateway listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        self.disconnect_all()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def __aenter__(self) -> SimGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- fault injection ----------------------------------------------------------------------
    def disconnect_all(self) -> int:
        """Drop every client connection abruptly (like a gateway restart). Returns how many."""
        n = 0
        for c in list(self._clients):
            for task in c.inflight.values():
                task.cancel()
            c.writer.transport.abort()
            n += 1
        self._clients.clear()
        return n

    def no_data_for(self, symbol: str, enabled: bool = True) -> None:
        """Answer every historical request for `symbol` with 162 "HMDS query returned no data"."""
        s = normalize_symbol(symbol)
        if enabled:
            self._no_data.add(s)
        else:
            self._no_data.discard(s)

    def connectivity_lost(self) -> None:
        """Tell every client that the gateway lost IB's servers (error 1100)."""
        self._broadcast_error(1100, "Connectivity between IB and Trader Workstation has been lost.")

    def connectivity_restored(self, data_lost: bool = False) -> None:
        if data_lost:
            self._broadcast_error(1101, "Connectivity between IB and TWS has been restored - data lost.")
        else:
            self._broadcast_error(1102, "Connectivity between IB and TWS has been restored - data maintained.")

    def _broadcast_error(self, code: int, msg: str) -> None:
        for c in self._clients:
            c.send(self._error(-1, code, msg))

    # --- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _error(req_id: int, code: int, msg: str) -> bytes:
        # Server version >= 166: one more (empty) field, advancedOrderRejectJson.
        return p.encode(p.OUT_ERROR, 2, req_id, code, msg, "")

    def instrument_for(self, c: p.WireContract) -> Instrument | None:
        """The universe entry a wire contract designates (by conId, else symbol [+ currency])."""
        if c.con_id:
            for candidate in self.universe.values():
                if self.con_id_of(candidate) == c.con_id:
                    return candidate
            return None
        if c.sec_type == "CASH":
            key = normalize_symbol(c.local_symbol or f"{c.symbol}{c.currency}")
            if len(key) == 3:
                key = f"{c.symbol}{c.currency}".upper()
        else:
            key = normalize_symbol(c.symbol)
        inst = self.universe.get(key)
        if inst is None:
            return None
        kind_ok = (inst.kind == "forex") == (c.sec_type == "CASH")
        cur_ok = not c.currency or c.currency == inst.currency
        return inst if kind_ok and cur_ok and (c.sec_type in ("", "STK", "CASH")) else None

    @staticmethod
    def con_id_of(inst: Instrument) -> int:
        if inst.con_id:
            return int(inst.con_id)
        return 1_000_000 + sum((i + 1) * ord(ch) for i, ch in enumerate(inst.symbol))

    def head_timestamp_of(self, inst: Instrument) -> datetime:
        key = normalize_symbol(inst.symbol)
        if key in self.head_timestamps:
            t = self.head_timestamps[key]
            return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
        return DEFAULT_HEAD_FOREX if inst.kind == "forex" else DEFAULT_HEAD_STOCK

    def bars_for(self, inst: Instrument, bar_size: str, start: datetime, end: datetime) -> pd.DataFrame:
        """The bars this gateway serves for [start, end) (CSV replay first, else synthetic)."""
        tf = parse_timeframe(bar_size)
        start = max(start, self.head_timestamp_of(inst))
        if start >= end:
            return generate_bars(inst, tf, start, start, self.seed, starts=pd.DatetimeIndex([], tz=UTC))
        if self.csv is not None:
            df = self.csv.bars(normalize_symbol(inst.symbol), tf, start, end)
            if df is not None:
                return df
        return generate_bars(inst, tf, start, end, self.seed)

    # --- connection handling ------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(writer)
        self._clients.add(client)
        self.connections += 1
        buf = bytearray()
        try:
            prefix = await reader.readexactly(4)
            if prefix != b"API\0":
                log.warning("sim-gateway: not a TWS API client (prefix %r)", prefix)
                return
            handshake_done = False
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                buf += chunk
                for fields in p.split_frames(buf):
                    if not handshake_done:
                        # "v157..178": answer with our version and the connection time.
                        handshake_done = True
                        now = datetime.now(UTC).strftime("%Y%m%d %H:%M:%S GMT")
                        client.send(p.encode(p.SERVER_VERSION, now))
                        continue
                    self._dispatch(client, fields)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        except asyncio.CancelledError:
            raise
        finally:
            for task in client.inflight.values():
                task.cancel()
            self._clients.discard(client)
            with contextlib.suppress(Exception):
                writer.close()

    def _dispatch(self, client: _Client, fields: list[str]) -> None:
        try:
            msg_id = int(fields[0])
        except (ValueError, IndexError):
            log.warning("sim-gateway: unreadable message %r", fields[:3])
            return
        try:
            if msg_id == p.IN_START_API:
                self._on_start_api(client, fields)
            elif msg_id == p.IN_REQ_HISTORICAL_DATA:
                self._on_historical(client, fields)
            elif msg_id == p.IN_CANCEL_HISTORICAL_DATA:
                self._on_cancel_historical(client, int(fields[2]))
            elif msg_id == p.IN_REQ_CONTRACT_DETAILS:
                self._on_contract_details(client, fields)
            elif msg_id == p.IN_REQ_HEAD_TIMESTAMP:
                self._on_head_timestamp(client, fields)
            elif msg_id == p.IN_CANCEL_HEAD_TIMESTAMP:
                pass  # answered at once: nothing in flight to stop
            elif msg_id == p.IN_REQ_POSITIONS:
                client.send(p.encode(p.OUT_POSITION_END, 1))  # ib_async always asks at connect
            elif msg_id == p.IN_REQ_IDS:
                client.send(p.encode(p.OUT_NEXT_VALID_ID, 1, self._next_order_id))
            elif msg_id == p.IN_REQ_MANAGED_ACCTS:
                client.send(p.encode(p.OUT_MANAGED_ACCTS, 1, self.account))
            elif msg_id == p.IN_REQ_CURRENT_TIME:
                client.send(p.encode(p.OUT_CURRENT_TIME, 1, int(time.time())))
            else:
                self.unknown_messages[msg_id] = self.unknown_messages.get(msg_id, 0) + 1
                log.info("sim-gateway: ignoring message id %d (%d fields)", msg_id, len(fields))
        except Exception:
            log.exception("sim-gateway: failed to handle message %r", fields[:4])

    def _on_start_api(self, client: _Client, fields: list[str]) -> None:
        client_id = int(fields[2])
        if any(c.client_id == client_id for c in self._clients if c is not client):
            client.send(
                self._error(-1, 326, "Unable to connect as the client id is already in use. "
                            "Retry with a unique client id.")
            )
            client.writer.close()
            return
        client.client_id = client_id
        client.send(p.encode(p.OUT_NEXT_VALID_ID, 1, self._next_order_id))
        client.send(p.encode(p.OUT_MANAGED_ACCTS, 1, self.account))
        for code, text in (
            (2104, "Market data farm connection is OK:usfarm"),
            (2106, "HMDS data farm connection is OK:ushmds"),
            (2158, "Sec-def data farm connection is OK:secdefnj"),
        ):
            client.send(self._error(-1, code, text))

    def _on_contract_details(self, client: _Client, fields: list[str]) -> None:
        req_id, wc = p.parse_contract_details_request(fields)
        inst = self.instrument_for(wc)
        if inst is None:
            client.send(self._error(req_id, 200, MSG_NO_SECDEF))
            return
        hours = self._hours.get(self._hours_key(inst))
        if hours is not None:  # known for today: answered at once, as a gateway does
            self._send_contract_details(client, req_id, inst, wc, hours)
            return
        client.inflight[req_id] = asyncio.create_task(self._answer_contract_details(client, req_id, inst, wc))

    @staticmethod
    def _hours_key(inst: Instrument) -> tuple[str, str, date]:
        return inst.symbol, inst.tz, datetime.now(ZoneInfo(inst.tz)).date()  # its hours start on its own day

    async def _answer_contract_details(self, client: _Client, req_id: int, inst: Instrument,
                                       wc: p.WireContract) -> None:
        # An instrument's trading hours are computed off the loop, once a day, as bars are: they come
        # from the exchange calendar, which the process builds on its first use (0.5-0.9 s on a quiet
        # host, 4-12 s measured on a loaded 2-core one). Built on the loop, that silenced the whole
        # gateway, time requests included, and the client's stall watch (3 s) took the live gateway for
        # a dead one and dropped it.
        try:
            key = self._hours_key(inst)
            hours = await asyncio.to_thread(trading_hours, inst, datetime.now(UTC))
            self._hours[key] = hours
            self._send_contract_details(client, req_id, inst, wc, hours)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # answer anyway: a silent gateway would leave the client waiting
            log.exception("sim-gateway: failed to answer contract details reqId %d", req_id)
            client.send(self._error(req_id, 322, f"Error processing request: simulated gateway: {e}"))
        finally:
            if client.inflight.get(req_id) is asyncio.current_task():
                del client.inflight[req_id]

    def _send_contract_details(self, client: _Client, req_id: int, inst: Instrument, wc: p.WireContract,
                               hours: str) -> None:
        client.send(self._contract_details(req_id, inst, wc, hours))
        client.send(p.encode(p.OUT_CONTRACT_DATA_END, 1, req_id))

    def _contract_details(self, req_id: int, inst: Instrument, wc: p.WireContract, hours: str) -> bytes:
        forex = inst.kind == "forex"
        sym = normalize_symbol(inst.symbol)
        symbol = inst.ib_symbol
        local = inst.local_symbol or (f"{sym[:3]}.{sym[3:]}" if forex else sym)
        exchange = wc.exchange or inst.exchange
        primary = "" if forex else ("NASDAQ" if inst.exchange == "SMART" else inst.exchange)
        # Field order: ib_async decoder.contractDetails for server version >= 164.
        return p.encode(
            p.OUT_CONTRACT_DATA, req_id,
            symbol, "CASH" if forex else "STK", "", 0.0, "", exchange, inst.currency, local,
            local if forex else "NMS", local if forex else sym, self.con_id_of(inst),
            0.00005 if forex else 0.01,
            "", "LMT,MKT", f"{exchange},{inst.exchange}" if not forex else "IDEALPRO", 1, 0,
            f"{local} (simulated)", primary, "", "", "", "",
            inst.tz, hours, hours, "", "",
            0,  # no secIds
            1, "", "", "26", "", "" if forex else "COMMON",
            "0.0001", "0.0001", "100" if not forex else "1",
        )  # fmt: skip

    def _on_head_timestamp(self, client: _Client, fields: list[str]) -> None:
        req = p.HeadTimestampRequest.parse(fields)
        inst = self.instrument_for(req.contract)
        if inst is None:
            client.send(self._error(req.req_id, 200, MSG_NO_SECDEF))
            return
        if normalize_symbol(inst.symbol) in self._no_data:
            client.send(self._error(req.req_id, 162, MSG_NO_DATA.format(what=req.what_to_show)))
            return
        head = self.head_timestamp_of(inst)
        client.send(p.encode(p.OUT_HEAD_TIMESTAMP, req.req_id, p.format_ib_time(head, req.format_date)))

    def _on_historical(self, client: _Client, fields: list[str]) -> None:
        now_m = time.monotonic()
        req = p.HistoricalRequest.parse(fields)
        self.historical_requests += 1
        rec = RequestRecord(
            at=now_m, wall=datetime.now(UTC), client_id=client.client_id, req_id=req.req_id,
            symbol=req.contract.local_symbol or req.contract.symbol, bar_size=req.bar_size,
            duration=req.duration, end=req.end, what_to_show=req.what_to_show,
        )  # fmt: skip
        self.requests.append(rec)
        self.request_event.set()
        inst = self.instrument_for(req.contract)
        if inst is None:
            rec.outcome = "unknown_symbol"
            client.send(self._error(req.req_id, 200, MSG_NO_SECDEF))
            return
        rec.symbol = normalize_symbol(inst.symbol)
        key = RequestKey(
            contract=str(self.con_id_of(inst)),
            exchange=req.contract.exchange,
            what_to_show=req.what_to_show,
            params=f"{req.end}|{req.duration}|{req.bar_size}|{req.use_rth}",
        )
        if self.pacing:
            why = self._enforcer.violation(key, now_m)
            if why is not None:
                self.pacing_violations += 1
                rec.outcome = "pacing"
                log.info("sim-gateway: pacing violation (%s) for reqId %d", why, req.req_id)
                client.send(self._error(req.req_id, 162, MSG_PACING))
                return
        self._enforcer.record(key, now_m)
        try:
            end = p.parse_end_datetime(req.end, datetime.now(UTC))
            start = end - p.parse_duration(req.duration)
            parse_timeframe(req.bar_size)
        except (ValueError, ValidationError) as e:
            rec.outcome = "invalid"
            client.send(self._error(req.req_id, 321, f"Error validating request.-'bP' : cause - {e}"))
            return
        if req.req_id in client.inflight:
            client.inflight.pop(req.req_id).cancel()
        self._enforcer.open += 1
        task = asyncio.create_task(self._answer_historical(client, req, inst, start, end, rec))
        client.inflight[req.req_id] = task

    async def _answer_historical(
        self, client: _Client, req: p.HistoricalRequest, inst: Instrument,
        start: datetime, end: datetime, rec: RequestRecord,
    ) -> None:  # fmt: skip
        try:
            if self.latency_s > 0:
                await asyncio.sleep(self.latency_s)
            if normalize_symbol(inst.symbol) in self._no_data:
                rec.outcome = "no_data"
                what = f"{normalize_symbol(inst.symbol)}@{req.contract.exchange} {req.what_to_show}"
                client.send(self._error(req.req_id, 162, MSG_NO_DATA.format(what=what)))
                return
            # Off the loop: generating and encoding bars must not delay reading (and stamping, for
            # pacing) the requests that arrive meanwhile.
            payload, n_bars = await asyncio.to_thread(self._historical_answer, req, inst, start, end)
            client.send(payload)
            rec.outcome = "ok"
            rec.bars = n_bars
            rec.answered_at = time.monotonic()
            with contextlib.suppress(ConnectionError):
                await client.writer.drain()
        except asyncio.CancelledError:
            if rec.outcome == "pending":
                rec.outcome = "dropped"
            raise
        except Exception as e:
            # Answer anyway: a silent gateway would leave the client waiting for its timeout.
            log.exception("sim-gateway: failed to answer historical reqId %d", req.req_id)
            rec.outcome = "error"
            client.send(self._error(req.req_id, 322, f"Error processing request: simulated gateway: {e}"))
        finally:
            self._enforcer.open = max(0, self._enforcer.open - 1)
            if client.inflight.get(req.req_id) is asyncio.current_task():
                del client.inflight[req.req_id]

    def _historical_answer(
        self, req: p.HistoricalRequest, inst: Instrument, start: datetime, end: datetime
    ) -> tuple[bytes, int]:
        df = self.bars_for(inst, req.bar_size, start, end)
        fmt = req.format_date
        out: list[object] = [
            p.OUT_HISTORICAL_DATA, req.req_id,
            p.format_ib_time(start, 1), p.format_ib_time(end, 1), len(df),
        ]  # fmt: skip
        ts = df.index.as_unit("s").asi8.tolist()
        daily = not parse_timeframe(req.bar_size).is_intraday
        cols = [df[c].tolist() for c in ("open", "high", "low", "close", "volume")]
        for i, t in enumerate(ts):
            o, h, lo, c, v = (col[i] for col in cols)
            when = datetime.fromtimestamp(t, UTC)
            # Like IB: daily and weekly bars are dated "YYYYMMDD" whatever formatDate says.
            date = f"{when:%Y%m%d}" if daily else (str(t) if fmt == 2 else p.format_ib_time(when, fmt))
            count = int(v // 100) if v > 0 else -1
            out += [date, o, h, lo, c, v, round((h + lo + c) / 3, 6), count]
        return p.encode(*out), len(df)

    def _on_cancel_historical(self, client: _Client, req_id: int) -> None:
        task = client.inflight.pop(req_id, None)
        if task is None or task.done():
            client.send(self._error(req_id, 366, f"No historical data query found for ticker id:{req_id}"))
            return
        task.cancel()
        self.cancels += 1
        for rec in reversed(self.requests):
            if rec.req_id == req_id and rec.client_id == client.client_id:
                rec.outcome = "cancelled"
                break
        client.send(self._error(req_id, 162, MSG_CANCELLED.format(req_id=req_id)))
