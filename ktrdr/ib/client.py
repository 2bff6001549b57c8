"""IbClient: the one read-only ib_async connection of an ib actor, and the data calls it serves.

It connects with exponential backoff and, once started, reconnects by itself FOREVER to the same
host:port (capped backoff, `max_backoff_s`) whenever the gateway drops or is not there yet: IB
Gateway restarts (daily, or a crash that `ktrdr up` recovers on the same port) are routine. When the
connection drops every request in flight fails at once with DisconnectedError naming the gateway,
and new requests fail fast (`ready_timeout`) while it is away, so callers decide how long to wait.
`state` says where the connection stands ("connected", "... disconnected; reconnecting ...").
It follows IB's connectivity messages (1100 lost: in-flight requests fail, new ones wait; 1101/1102
restored). Every historical request goes through one PacingLimiter so IB never has to answer 162.
A gateway that is connected but silent (paused, hung: the socket stays open, nothing comes back) is
caught by the stall watch: while a request waits and nothing at all arrived for `stall_s / 3`, one
time request (reqCurrentTime, which the gateway answers at once) goes out; nothing for `stall_s`
fails every request in flight with DisconnectedError ("... stopped answering") and drops the
connection, so new requests fail at once and the reconnect loop takes over. Without it such a
request waited `request_timeout` (120 s), and a load with retries twice that per attempt.
`source` is "sim" for a simulated gateway (account names starting with "SIM"), else "ib".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, date, datetime

import pandas as pd
from ib_async import IB, Contract, StartupFetchNONE

from events.messages import ContractInfo
from ktrdr.cancellation import CancellationToken
from ktrdr.data.calendar import Instrument
from ktrdr.data.timeframes import Timeframe
from ktrdr.errors import DisconnectedError, NoDataError, OperationCancelledError, UnknownSymbolError
from ktrdr.ib import errors as ib_errors
from ktrdr.ib.contracts import contract_for, contract_info, instrument_for, pick_details, qualified_contract
from ktrdr.ib.historical import fetch_bars, to_utc
from ktrdr.ib.pacing import Gate, OnWait, PacingLimiter, PacingRules
from ktrdr.ib.requests import RequestTracker

log = logging.getLogger("ktrdr.ib")
# IB's "not connected" code: what an in-flight request fails with when the gateway goes away.
GATEWAY_GONE = 504


def _not_our_own_cancel(record: logging.LogRecord) -> bool:
    # ib_async logs IB's answers to our cancelHistoricalData ("162 ... query cancelled", or 366 "No
    # historical data query found" when the answer crossed the cancel) as ERRORs; those cancels are
    # ours (an operation was cancelled) and the operation's events say so.
    text = record.getMessage()
    return "historical data query cancelled" not in text and "No historical data query found" not in text


def _not_a_reconnect_attempt(record: logging.LogRecord) -> bool:
    # ib_async logs every failed connection attempt as two ERRORs; while the gateway is away that is
    # one pair per backoff step, forever. IbClient logs the outage itself (first failure, then rarely).
    text = record.getMessage()
    return not text.startswith("API connection failed") and not text.startswith("Make sure API port")


logging.getLogger("ib_async.wrapper").addFilter(_not_our_own_cancel)
logging.getLogger("ib_async.client").addFilter(_not_a_reconnect_attempt)


class IbClient:
    """Owns ONE ib_async `IB` connection (read-only). Use `async with IbClient(...)` or connect/close;
    a long-lived owner (the ib actor) calls `start()`, which never fails and keeps reconnecting."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 4002,
        client_id: int = 1,
        *,
        pacing: PacingRules | None = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 120.0,
        reconnect: bool = True,
        max_backoff_s: float = 10.0,
        ready_timeout: float | None = None,
        universe: dict[str, Instrument] | None = None,
        stall_s: float = 3.0,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.reconnect = reconnect
        self.max_backoff_s = max_backoff_s
        # How long a request waits for a dropped connection to come back before DisconnectedError
        # (None: connect_timeout). 0 fails at once: the caller owns the retry policy.
        self.ready_timeout = connect_timeout if ready_timeout is None else ready_timeout
        self.universe = universe
        self.stall_s = stall_s  # a connected gateway silent this long while a request waits: dropped (0: never)
        self.stalls = 0  # connections dropped by the stall watch
        self.ib = IB()
        self.limiter = PacingLimiter(pacing)
        self._tracker = RequestTracker(self.ib, gateway=self.gateway)
        self._connected = asyncio.Event()
        self._upstream_ok = asyncio.Event()  # cleared by 1100, set again by 1101/1102
        self._upstream_ok.set()
        self._closing = False
        self._started = False
        self._reconnect_task: asyncio.Task[None] | None = None
        self._accounts: list[str] = []
        self._contracts: dict[str, tuple[Instrument, Contract, ContractInfo]] = {}
        self._qualifying: dict[str, asyncio.Future[tuple[Instrument, Contract, ContractInfo]]] = {}
        self.reconnects = 0  # successful reconnections after a drop
        self.attempts = 0  # failed connection attempts since the connection was last up
        self.last_error = ""
        self.ib.disconnectedEvent += self._on_disconnected
        self.ib.errorEvent += self._on_error
        self._heard = 0.0  # loop time of the last bytes from the gateway
        self._probed = 0.0  # loop time of the last time request of the stall watch
        self._stall_task: asyncio.Task[None] | None = None
        self.ib.client.conn.hasData += self._on_data

    # --- connection ---------------------------------------------------------------------------
    @property
    def gateway(self) -> str:
        return f"IB gateway at {self.host}:{self.port}"

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set() and self.ib.isConnected()

    @property
    def state(self) -> str:
        """One line for logs and presence: "connected", or why not and what it is doing about it."""
        if self.is_connected:
            return "connected" if self._upstream_ok.is_set() else f"{self.gateway} lost IB's servers (1100); waiting"
        if self._closing:
            return "closed"
        if not self._started:
            return "not started"
        tail = f" (attempt {self.attempts}: {self.last_error})" if self.attempts and self.last_error else ""
        return f"{self.gateway} disconnected; reconnecting{tail}"

    @property
    def accounts(self) -> list[str]:
        return list(self._accounts)

    @property
    def source(self) -> str:
        """"sim" when the gateway is simulated (its accounts start with "SIM"), else "ib"."""
        return "sim" if self._accounts and all(a.startswith("SIM") for a in self._accounts) else "ib"

    async def __aenter__(self) -> IbClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> bool:
        """Connect once (up to connect_timeout) and, whether that worked or not, keep the connection
        up from now on: never raises. Returns whether it is connected now."""
        self._started = True
        self._closing = False
        try:
            await self._connect_once(max(self.connect_timeout, 1.0))
            return True
        except Exception as e:
            self._note_failure(e)
            self._ensure_reconnecting()
            return False

    async def connect(self) -> None:
        """Connect, retrying with exponential backoff for up to `connect_timeout` seconds."""
        self._started = True
        self._closing = False
        deadline = time.monotonic() + self.connect_timeout
        delay = 0.1
        last: BaseException | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                await self._connect_once(min(remaining, 5.0))
                return
            except (OSError, TimeoutError, ConnectionError) as e:
                last = e
                log.info("IB connect to %s:%d failed (%r); retrying in %.2g s", self.host, self.port, e, delay)
            await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0)))
            delay = min(delay * 2, self.max_backoff_s)
        raise DisconnectedError(
            f"cannot connect to IB Gateway/TWS at {self.host}:{self.port} (client id {self.client_id}): {last!r}",
            hint="is the gateway running with the API enabled on that port, and is the client id free?",
        )

    async def _connect_once(self, timeout: float) -> None:
        # Read-only and no start-up downloads: a data client needs only the handshake.
        await self.ib.connectAsync(
            self.host, self.port, self.client_id, timeout=timeout, readonly=True, fetchFields=StartupFetchNONE
        )
        self._accounts = list(self.ib.managedAccounts())
        self._heard = asyncio.get_running_loop().time()
        self._upstream_ok.set()
        self._connected.set()
        self.attempts, self.last_error = 0, ""
        if self.stall_s > 0 and (self._stall_task is None or self._stall_task.done()):
            self._stall_task = asyncio.get_running_loop().create_task(self._stall_watch())
        log.info("connected to %s:%d as client %d (%s)", self.host, self.port, self.client_id, self.source)

    def _on_data(self, _data: bytes) -> None:
        with contextlib.suppress(RuntimeError):
            self._heard = asyncio.get_running_loop().time()

    async def _stall_watch(self) -> None:
        """While connected: a request waiting on a gateway that sends nothing at all is a gateway gone
        silent. After stall_s / 3 of silence one time request goes out (answered at once by a live
        gateway, whatever its data farms are doing); after stall_s the connection is dropped."""
        loop = asyncio.get_running_loop()
        tick = max(self.stall_s / 6, 0.05)
        while not self._closing:
            await asyncio.sleep(tick)
            waiting = self._tracker.waiting_since
            if waiting is None or not self.is_connected:
                continue
            since = max(self._heard, waiting)
            quiet = loop.time() - since
            if quiet >= self.stall_s:
                self._stalled(quiet)
            elif quiet >= self.stall_s / 3 and self._probed < since:
                self._probed = loop.time()
                with contextlib.suppress(ConnectionError):
                    self.limiter.note_message()
                    self.ib.client.reqCurrentTime()

    def _stalled(self, quiet: float) -> None:
        self.stalls += 1
        text = (f"{self.gateway} stopped answering: nothing received for {quiet:.1f} s while a request "
                f"waited, not even to a time request")
        log.warning("%s; dropping the connection and reconnecting", text)
        self._tracker.fail_all(GATEWAY_GONE, text)
        self.attempts, self.last_error = 1, text[len(self.gateway) + 1:][:200]
        self.ib.disconnect()  # disconnectedEvent: new requests fail at once, the reconnect loop starts

    def _note_failure(self, e: BaseException) -> None:
        self.attempts += 1
        self.last_error = f"{type(e).__name__}: {e}"[:200]
        # The first failure of an outage is news; after that one line a minute or so is enough.
        level = logging.WARNING if self.attempts == 1 else logging.INFO
        if self.attempts == 1 or self.attempts % 10 == 0:
            log.log(level, "%s: connect attempt %d failed (%s); reconnecting with backoff up to %g s",
                    self.gateway, self.attempts, self.last_error, self.max_backoff_s)

    def _on_disconnected(self) -> None:
        was_up = self._connected.is_set()
        self._connected.clear()
        if was_up:
            # Their answers will never come: fail every request in flight now, not at its timeout.
            self._tracker.fail_all(GATEWAY_GONE, f"{self.gateway} disconnected")
        if self._closing or not self.reconnect:
            return
        if was_up:
            log.warning("%s: connection lost; reconnecting", self.gateway)
        self._ensure_reconnecting()

    def _ensure_reconnecting(self) -> None:
        if self._closing or not self.reconnect:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # dropped while no loop runs (interpreter shutdown): nothing to do
            return
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = loop.create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        """Forever (until close): the same host:port, backoff doubling from 50 ms to max_backoff_s."""
        delay = 0.05
        while not self._closing and not self.is_connected:
            try:
                await self._connect_once(max(self.connect_timeout, 1.0))
                self.reconnects += 1
                log.warning("%s: reconnected (reconnect #%d)", self.gateway, self.reconnects)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # anything at all: an outage must never end the loop
                self._note_failure(e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)

    def _on_error(self, req_id: int, code: int, text: str, _contract: object = None) -> None:
        if code == ib_errors.CONNECTIVITY_LOST:
            # IB's servers are gone behind the gateway: answers to requests in flight will not come.
            self._upstream_ok.clear()
            self._tracker.fail_all(code, text)
        elif code in (ib_errors.RESTORED_DATA_LOST, ib_errors.RESTORED_DATA_KEPT):
            # No subscriptions to renew (historical requests only); waiting requests may go again.
            self._upstream_ok.set()

    def down_error(self) -> DisconnectedError:
        return DisconnectedError(self.state if not self.is_connected or not self._upstream_ok.is_set()
                                 else f"{self.gateway} not ready",
                                 hint="the ib actor keeps reconnecting by itself; retry shortly")

    async def _ready(self, cancel: CancellationToken | None) -> None:
        """Wait (up to ready_timeout, interruptibly) until connected and IB connectivity is OK."""
        if not self._started:
            await self.connect()
        if self._connected.is_set() and self._upstream_ok.is_set() and self.ib.isConnected():
            return
        if self.ready_timeout <= 0:
            raise self.down_error()
        waits = [asyncio.ensure_future(self._until_ready())]
        if cancel is not None:
            waits.append(asyncio.ensure_future(cancel.wait()))
        try:
            done, _ = await asyncio.wait(waits, timeout=self.ready_timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if cancel is not None and cancel.is_cancelled:
            raise OperationCancelledError("waiting for the IB connection", cancel.reason)
        if not done:
            raise self.down_error()

    async def _until_ready(self) -> None:
        while not (self._connected.is_set() and self._upstream_ok.is_set()):
            await self._connected.wait()
            await self._upstream_ok.wait()

    def _still_ready(self, extra: Gate | None) -> Gate:
        """The pacing gate: drop a request whose caller went away (`extra`), or that would go to a
        connection that is down, before it takes a pacing slot."""

        async def gate() -> None:
            if extra is not None:
                await extra()
            if not (self.is_connected and self._upstream_ok.is_set()):
                raise self.down_error()

        return gate

    async def close(self) -> None:
        self._closing = True
        for task in (self._reconnect_task, self._stall_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._connected.clear()
        if self.ib.isConnected():
            self.ib.disconnect()

    # --- contracts ----------------------------------------------------------------------------
    async def _qualified(
        self, symbol: str, cancel: CancellationToken | None = None
    ) -> tuple[Instrument, Contract, ContractInfo]:
        inst = instrument_for(symbol, self.universe)
        hit = self._contracts.get(inst.symbol)
        if hit is not None:
            return hit
        await self._ready(cancel)
        # One lookup per symbol however many requests want it at once: 60 concurrent first requests
        # would otherwise send 60 contract lookups, and ib_async's 45-messages-a-second throttle would
        # hold back the historical requests the pacing limiter has already stamped as sent.
        lookup = self._qualifying.get(inst.symbol)
        if lookup is None:
            lookup = asyncio.ensure_future(self._lookup(inst, symbol))
            self._qualifying[inst.symbol] = lookup
            lookup.add_done_callback(lambda f, key=inst.symbol: (self._qualifying.pop(key, None),
                                                                 f.cancelled() or f.exception()))
        if cancel is None:
            return await asyncio.shield(lookup)
        stop = asyncio.ensure_future(cancel.wait())
        try:
            await asyncio.wait({lookup, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not lookup.done():
            raise OperationCancelledError(f"contract lookup for {inst.symbol}", cancel.reason)
        return lookup.result()

    async def _lookup(self, inst: Instrument, symbol: str) -> tuple[Instrument, Contract, ContractInfo]:
        contract = contract_for(inst)
        def send(rid: int) -> None:
            self.limiter.note_message()
            self.ib.client.reqContractDetails(rid, contract)

        details = await self._tracker.run(
            send,
            symbol=inst.symbol,
            what="contract lookup",
            timeout=self.request_timeout,
            contract=contract,
        )
        chosen = pick_details(inst, list(details or []))
        if chosen is None:
            raise UnknownSymbolError(
                f"IB does not know the symbol {symbol!r} as a {inst.kind}",
                ib_code=200,
                hint="check the spelling; stocks are looked up on SMART in USD, forex pairs are written "
                "EURUSD or EUR.USD",
            )
        hit = (inst, qualified_contract(inst, chosen), contract_info(inst, chosen))
        self._contracts[inst.symbol] = hit  # contract ids never change: cache for the session
        return hit

    async def qualify(self, symbol: str) -> ContractInfo:
        """IB's contract for `symbol` ("AAPL", "EURUSD", "EUR.USD"); UnknownSymbolError (200) if none."""
        return (await self._qualified(symbol))[2]

    async def head_timestamp(self, symbol: str, what_to_show: str | None = None) -> datetime:
        """The first instant IB has data for `symbol` (UTC); earlier bars do not exist."""
        inst, contract, _ = await self._qualified(symbol)
        await self._ready(None)
        wts = what_to_show or inst.what_to_show
        use_rth = inst.kind == "stock"
        sent: list[int] = []

        def send(rid: int) -> None:
            sent.append(rid)
            self.limiter.note_message()
            self.ib.client.reqHeadTimeStamp(rid, contract, wts, use_rth, 2)

        result = await self._tracker.run(
            send, symbol=inst.symbol, what="head timestamp", timeout=self.request_timeout, contract=contract,
            on_abandon=self.ib.client.cancelHeadTimeStamp,
        )  # fmt: skip
        with contextlib.suppress(ConnectionError):
            self.ib.client.cancelHeadTimeStamp(sent[0])  # as ib_async does once answered
        if isinstance(result, datetime):
            return to_utc(result)
        if isinstance(result, date):
            return datetime(result.year, result.month, result.day, tzinfo=UTC)
        raise NoDataError(f"IB gave no head timestamp for {inst.symbol} ({wts})", ib_code=162)

    # --- bars ---------------------------------------------------------------------------------
    async def bars(
        self,
        symbol: str,
        timeframe: Timeframe,
        start: datetime,
        end: datetime,
        *,
        cancel: CancellationToken | None = None,
        on_wait: OnWait | None = None,
        gate: Gate | None = None,
        owner: str = "",
    ) -> pd.DataFrame:
        """Bars of `symbol` starting in [start, end): ONE paced IB request (split longer ranges by
        `max_request(timeframe)` first). UTC index "timestamp", float open/high/low/close/volume;
        `attrs`: source ("ib"/"sim"), pacing_wait_s. `gate` is awaited right before the request takes
        its pacing slot; raising there drops it uncounted; `owner` (the operation) takes fair turns
        with the other owners waiting (PacingLimiter). Typed errors: UnknownSymbolError,
        NoDataError, PacingError, DisconnectedError, OperationCancelledError, ValidationError."""
        if cancel is not None:
            cancel.raise_if_cancelled(f"{timeframe} bars for {symbol}")
        inst, contract, _ = await self._qualified(symbol, cancel)
        await self._ready(cancel)
        df = await fetch_bars(
            self.ib, self._tracker, self.limiter, contract, inst, timeframe, start, end,
            timeout=self.request_timeout, cancel=cancel, on_wait=on_wait, gate=self._still_ready(gate),
            owner=owner,
        )  # fmt: skip
        df.attrs["source"] = self.source
        return df
