"""Operation leases: at most one attempt of an operation runs in the whole system at a time.

The lease of an operation is a key in the KV bucket LEASES (file storage, so it survives a server
restart, unlike the memory-backed presence records). A worker takes it with compare-and-set and
renews it (compare-and-set again) on every heartbeat. A worker that is handed a redelivered work
item whose lease another actor holds does not run it; it takes the lease over only after seeing the
same revision unchanged for a whole lease time on its own clock (no clock is compared across
machines). A holder whose renewal fails has lost the lease: it stops without a terminal event.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from events.codec import DecodeError, decode, encode
from events.messages import Lease


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


class Leases:
    def __init__(self, kv: KeyValue, actor_id: str, ttl_s: float) -> None:
        self.kv, self.actor_id, self.ttl_s = kv, actor_id, ttl_s
        self._seen: dict[str, tuple[int, float]] = {}  # op_id -> (revision, when first seen)
        self._locks: dict[str, asyncio.Lock] = {}

    async def acquire(self, op_id: str) -> Held | Busy:
        """Take the lease of `op_id`. Its attempt number counts the runs: a lease handed back or taken
        over from a silent holder starts the next attempt."""
        try:
            entry = await self.kv.get(op_id)
        except (KeyNotFoundError, KeyDeletedError):
            entry = None
        if entry is None or not entry.value:
            return await self._claim(op_id, 1, last=None)
        try:
            lease = decode(entry.value, Lease)
        except DecodeError:
            lease = Lease(holder="?", attempt=0)
        rev = entry.revision or 0
        if lease.holder == self.actor_id:  # ours from before a restart of the server, say
            return Held(op_id, lease.attempt, rev)
        if not lease.holder:  # handed back by a worker that stopped
            return await self._claim(op_id, lease.attempt + 1, last=rev)
        seen = self._seen.get(op_id)
        now = time.monotonic()
        if seen is None or seen[0] != rev:
            self._seen[op_id] = (rev, now)
            return Busy(lease.holder, self.ttl_s)
        if now - seen[1] < self.ttl_s:
            return Busy(lease.holder, self.ttl_s - (now - seen[1]))
        return await self._claim(op_id, lease.attempt + 1, last=rev)  # the holder went silent

    async def _claim(self, op_id: str, attempt: int, last: int | None) -> Held | Busy:
        value = encode(Lease(holder=self.actor_id, attempt=attempt))
        try:
            if last is None:
                rev = await self.kv.create(op_id, value)
            else:
                rev = await self.kv.update(op_id, value, last=last)
        except Exception as exc:
            if not _is_cas_failure(exc):
                raise
            return Busy("another worker", self.ttl_s / 4)  # someone was faster
        self._seen.pop(op_id, None)
        return Held(op_id, attempt, rev)

    async def renew(self, held: Held) -> bool:
        """Extend the lease; False when it is no longer ours (taken over or removed). Renewals of one
        lease are serialised (the heartbeat's and the one before a verdict would otherwise race and
        one would see the other's revision as a takeover)."""
        lock = self._locks.setdefault(held.op_id, asyncio.Lock())
        async with lock:
            for _ in range(2):
                try:
                    held.revision = await self.kv.update(
                        held.op_id, encode(Lease(holder=self.actor_id, attempt=held.attempt)), last=held.revision)
                    return True
                except Exception as exc:
                    if not _is_cas_failure(exc):
                        raise  # server away: not a verdict; the caller tries again at the next beat
                if not await self._still_mine(held):
                    return False
            return False

    async def _still_mine(self, held: Held) -> bool:
        """After a failed compare-and-set: is the stored lease still this holder's same attempt (then
        take its revision and try again)?"""
        try:
            entry = await self.kv.get(held.op_id)
        except (KeyNotFoundError, KeyDeletedError):
            return False
        try:
            lease = decode(entry.value or b"", Lease)
        except DecodeError:
            return False
        if lease.holder != self.actor_id or lease.attempt != held.attempt:
            return False
        held.revision = entry.revision or held.revision
        return True

    def forget(self, op_id: str) -> None:
        self._locks.pop(op_id, None)

    async def release(self, held: Held, *, done: bool) -> None:
        """Done: remove the lease. Not done (handed back): keep its attempt count with no holder, so the
        next worker takes it at once as the next attempt."""
        async with self._locks.setdefault(held.op_id, asyncio.Lock()):  # never beside a renewal
            try:
                if done:
                    await self.kv.delete(held.op_id, last=held.revision)
                else:
                    held.revision = await self.kv.update(
                        held.op_id, encode(Lease(holder="", attempt=held.attempt)), last=held.revision)
            except Exception as exc:
                if not _is_cas_failure(exc):
                    raise


async def drop(kv: KeyValue, op_id: str) -> None:
    """Remove an operation's lease whoever holds it (the orchestrator, when it ends the operation)."""
    try:
        await kv.delete(op_id)
    except (KeyNotFoundError, KeyDeletedError):
        pass


def _is_cas_failure(exc: BaseException) -> bool:
    if isinstance(exc, KeyWrongLastSequenceError):
        return True
    text = str(exc).lower()
    return "wrong last sequence" in text or "key exists" in text or getattr(exc, "err_code", None) in (10071, 10164)
