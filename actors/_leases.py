"""Operation leases: at most one attempt of an operation runs in the whole system at a time.

The lease of an operation is its op id as a key in the KV bucket LEASES (file storage, so it survives
a server restart, unlike the memory-backed presence records), holding the holder's actor id and the
attempt number. The compare-and-set mechanics are ktrdr.transport.leases.LeaseBucket; this module says
what the value means. A worker takes the lease and renews it on every heartbeat. A worker that is
handed a redelivered work item whose lease another actor holds does not run it; it takes the lease
over only after seeing the same revision unchanged for a whole lease time on its own clock (no clock
is compared across machines). A holder whose renewal fails has lost the lease: it stops without a
terminal event.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from nats.js.kv import KeyValue

from events.codec import DecodeError, decode, encode
from events.messages import Lease
from ktrdr.transport.leases import Clock, Entry, LeaseBucket, drop

__all__ = ["Busy", "Held", "Leases", "drop"]


@dataclass
class Held:
    op_id: str
    attempt: int
    revision: int


@dataclass
class Busy:
    """Someone else holds it; come back after `retry_in` seconds."""

    holder: str
    retry_in: float


def _lease(entry: Entry | None) -> Lease | None:
    if entry is None:
        return None
    try:
        return decode(entry.value, Lease)
    except DecodeError:
        return Lease(holder="?", attempt=0)


class Leases:
    def __init__(self, kv: KeyValue, actor_id: str, ttl_s: float, *, clock: Clock = time.monotonic) -> None:
        self.bucket = LeaseBucket(kv, ttl_s, clock=clock)
        self.actor_id, self.ttl_s = actor_id, ttl_s
        self._locks: dict[str, asyncio.Lock] = {}

    def _value(self, attempt: int, holder: str | None = None) -> bytes:
        return encode(Lease(holder=self.actor_id if holder is None else holder, attempt=attempt))

    async def acquire(self, op_id: str) -> Held | Busy:
        """Take the lease of `op_id`. Its attempt number counts the runs: a lease handed back or taken
        over from a silent holder starts the next attempt."""
        entry = await self.bucket.read(op_id)
        lease = _lease(entry)
        if entry is None or lease is None:
            return await self._claim(op_id, 1, over=None)
        if lease.holder == self.actor_id:  # ours from before a restart of the server, say
            return Held(op_id, lease.attempt, entry.revision)
        if not lease.holder:  # handed back by a worker that stopped
            return await self._claim(op_id, lease.attempt + 1, over=entry)
        left = self.bucket.silent_for(op_id, entry)
        if left > 0:
            return Busy(lease.holder, left)
        return await self._claim(op_id, lease.attempt + 1, over=entry)  # the holder went silent

    async def _claim(self, op_id: str, attempt: int, over: Entry | None) -> Held | Busy:
        rev = await self.bucket.claim(op_id, self._value(attempt), over=over)
        if rev is None:
            return Busy("another worker", self.ttl_s / 4)  # someone was faster
        return Held(op_id, attempt, rev)

    async def renew(self, held: Held) -> bool:
        """Extend the lease; False when it is no longer ours (taken over or removed). Renewals of one
        lease are serialised (the heartbeat's and the one before a verdict would otherwise race and
        one would see the other's revision as a takeover). A server that does not answer raises: not
        a verdict; the caller tries again at the next beat."""
        async with self._locks.setdefault(held.op_id, asyncio.Lock()):
            for _ in range(2):
                rev = await self.bucket.renew(held.op_id, self._value(held.attempt), held.revision)
                if rev is not None:
                    held.revision = rev
                    return True
                if not await self._still_mine(held):
                    return False
            return False

    async def _still_mine(self, held: Held) -> bool:
        """After a failed compare-and-set: is the stored lease still this holder's same attempt (then
        take its revision and try again)?"""
        entry = await self.bucket.read(held.op_id)
        lease = _lease(entry)
        if entry is None or lease is None or lease.holder != self.actor_id or lease.attempt != held.attempt:
            return False
        held.revision = entry.revision or held.revision
        return True

    def forget(self, op_id: str) -> None:
        # Only the lock: the silence count of a lease held elsewhere must outlive the redelivery that
        # saw it, or a takeover would never come.
        self._locks.pop(op_id, None)

    async def release(self, held: Held, *, done: bool) -> None:
        """Done: remove the lease. Not done (handed back): keep its attempt count with no holder, so the
        next worker takes it at once as the next attempt. A lease no longer ours is left alone."""
        async with self._locks.setdefault(held.op_id, asyncio.Lock()):  # never beside a renewal
            if done:
                await self.bucket.release(held.op_id, held.revision)
            else:
                rev = await self.bucket.renew(held.op_id, self._value(held.attempt, holder=""), held.revision)
                held.revision = rev if rev is not None else held.revision
