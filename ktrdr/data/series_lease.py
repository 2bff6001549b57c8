"""One writer per series: the key `series.<SYMBOL>.<TF>` in the KV bucket SERIES, holding the writer
and the operation it writes for (SeriesLease). A data load (or `ktrdr data import`) takes it before
it merges into a BARS series and holds it, renewed, until it is done; a second writer waits,
cancellably, and says for whom. The compare-and-set mechanics are ktrdr.transport.leases.LeaseBucket;
this module says whose a lease is.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from events import subjects
from events.codec import DecodeError, decode, encode
from events.messages import SeriesLease
from ktrdr.cancellation import CancellationToken
from ktrdr.data.bars_store import bars_name
from ktrdr.transport.leases import Clock, LeaseBucket

OnWait = Callable[[SeriesLease], None]


def series_lease_key(symbol: str, timeframe: str) -> str:
    sym, tf = bars_name(symbol, timeframe).split("/")
    return f"series.{sym}.{tf}"


class SeriesWriterLease:
    """One writer per series: the key `series.<SYMBOL>.<TF>` in SERIES. Taken with create / compare-
    and-set and renewed every `ttl_s / 3`. A waiter takes it over from a holder that went silent (the
    same revision for a whole `ttl_s` on its own clock: no clocks compared across machines), or at once
    from an earlier attempt of its own operation (the operation lease guarantees that attempt is over)."""

    def __init__(self, kv: KeyValue, symbol: str, timeframe: str, *, holder: str, op_id: str = "",
                 ttl_s: float = 10.0, clock: Clock = time.monotonic) -> None:
        self.bucket = LeaseBucket(kv, ttl_s, clock=clock)
        self.key = series_lease_key(symbol, timeframe)
        self.holder, self.op_id, self.ttl_s = holder, op_id, ttl_s
        self.revision: int | None = None
        self.lost = False

    def _value(self) -> bytes:
        return encode(SeriesLease(holder=self.holder, op_id=self.op_id))

    def _mine(self, record: SeriesLease) -> bool:
        """Ours from before (a server restart, an earlier attempt of this operation): the same operation,
        or for an import (no operation) the same holder. Two loads in one job-manager are not "ours"."""
        if self.op_id:
            return record.op_id == self.op_id
        return record.holder == self.holder and not record.op_id

    async def _try(self) -> SeriesLease | None:
        """Take it if we may; else return the current holder's record."""
        entry = await self.bucket.read(self.key)
        if entry is None:
            self.revision = await self.bucket.claim(self.key, self._value(), over=None)
            return None if self.revision is not None else SeriesLease(holder="another writer")
        try:
            record = decode(entry.value, SeriesLease)
        except DecodeError:
            record = SeriesLease(holder="?")
        silent = self.bucket.silent_for(self.key, entry) == 0.0  # counted on every look, ours or not
        if self._mine(record) or silent:
            rev = await self.bucket.claim(self.key, self._value(), over=entry)
            if rev is not None:
                self.revision = rev
                return None
        return record

    async def acquire(self, cancel: CancellationToken | None = None, on_wait: OnWait | None = None,
                      poll_s: float = 0.1) -> None:
        """Wait for the lease (OperationCancelledError when `cancel` trips while waiting). A claim the
        server refuses for any reason but a lost race raises: it is not another writer."""
        told: tuple[str, str] | None = None
        while True:
            if cancel is not None:
                cancel.raise_if_cancelled("waiting for the series")
            holder = await self._try()
            if holder is None:
                self.lost = False
                return
            if on_wait is not None and (holder.holder, holder.op_id) != told:
                told = (holder.holder, holder.op_id)
                on_wait(holder)
            if cancel is not None:
                await cancel.sleep(poll_s)
            else:
                await asyncio.sleep(poll_s)

    async def renew(self) -> bool:
        if self.revision is None or self.lost:
            return False
        rev = await self.bucket.renew(self.key, self._value(), self.revision)
        if rev is None:
            self.lost = True  # taken over: whoever holds it now writes; our conditional puts would lose
            return False
        self.revision = rev
        return True

    async def release(self) -> None:
        if self.revision is None or self.lost:
            return
        with contextlib.suppress(Exception):  # not ours any more, or the server away: its ttl frees it
            await self.bucket.release(self.key, self.revision)
        self.revision = None

    @contextlib.asynccontextmanager
    async def held(self, cancel: CancellationToken | None = None,
                   on_wait: OnWait | None = None) -> AsyncIterator[SeriesWriterLease]:
        """Acquire, renew in the background, release at the end (whatever the outcome)."""
        await self.acquire(cancel, on_wait)
        # Stopped by an event, not by the cancel alone: nats.py turns a cancel inside a publish into
        # an exception (TooManyStalledMsgsError) or swallows it, which the suppress below took as
        # "server away", so the renewer kept renewing and the load waiting for it never ended
        # (python -m bench universe: a 30-symbol run hung with this task "cancelling" in its sleep).
        stop = asyncio.Event()

        async def keep() -> None:
            while not self.lost and not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.ttl_s / 3)
                    return
                with contextlib.suppress(Exception):  # server away: not a verdict; next round
                    await self.renew()

        task = asyncio.create_task(keep(), name=f"lease-{self.key}")
        try:
            yield self
        finally:
            stop.set()
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await asyncio.shield(self.release())


async def series_lease(js: JetStreamContext, symbol: str, timeframe: str, *, holder: str, op_id: str = "",
                       ttl_s: float = 10.0) -> SeriesWriterLease:
    return SeriesWriterLease(await js.key_value(subjects.SERIES_BUCKET), symbol, timeframe, holder=holder,
                             op_id=op_id, ttl_s=ttl_s)
