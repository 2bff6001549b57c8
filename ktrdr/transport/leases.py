"""Leases as keys in a KV bucket: who may do something now, and when a silent holder may be replaced.

A lease is one key whose value names its holder. It is taken with create (the key is absent) or with
compare-and-set on the revision just read, renewed with compare-and-set on the holder's own revision,
and released with a delete that expects that revision. A holder that stops renewing is replaced only
once its revision has stayed the same for a whole `ttl_s` on the replacer's own clock: no clock is
ever compared across machines. A compare-and-set that lost is told apart from a server that did not
answer by the error's type (`is_cas_failure`), never by its text: a lost race means "someone else
holds it", anything else is the caller's error to handle.

`LeaseBucket` is that mechanism once; what a lease's value says (an operation's attempt, a series'
writer) and when its holder counts as "me" belong to its users: actors/_leases.py (operation leases)
and ktrdr/data/series_lease.py (one writer per BARS series).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.js.errors import APIError, KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

# JetStream's "wrong last sequence" error codes: JSStreamWrongLastSequenceErrF (an expected revision
# that is not the stored one) and JSStreamWrongLastSequenceConstantErr (its constant-text variant).
CAS_ERROR_CODES = frozenset({10071, 10164})

Clock = Callable[[], float]


def is_cas_failure(exc: BaseException) -> bool:
    """A compare-and-set that lost (the key changed or appeared since it was read)? nats-py raises
    KeyWrongLastSequenceError from a KV create/update and a bare APIError from a conditional delete
    or an object put, both with the same JetStream error code."""
    if isinstance(exc, KeyWrongLastSequenceError):
        return True
    return isinstance(exc, APIError) and getattr(exc, "err_code", None) in CAS_ERROR_CODES


@dataclass(frozen=True)
class Entry:
    """A lease as read: its value and the revision a compare-and-set on it expects."""

    value: bytes
    revision: int


class LeaseBucket:
    """Leases in one KV bucket as one holder sees them: read, claim, renew, release, and the
    "unchanged for a whole ttl on my own clock" count that allows a takeover. `clock` is monotonic
    seconds (a test passes its own)."""

    def __init__(self, kv: KeyValue, ttl_s: float, *, clock: Clock = time.monotonic) -> None:
        self.kv, self.ttl_s, self.clock = kv, ttl_s, clock
        self._seen: dict[str, tuple[int, float]] = {}  # key -> (revision, when this clock first saw it)

    async def read(self, key: str) -> Entry | None:
        """The lease, or None when nobody holds it (never taken, deleted, or an empty value)."""
        try:
            entry = await self.kv.get(key)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        if entry is None or not entry.value:
            return None
        return Entry(bytes(entry.value), int(entry.revision or 0))

    def silent_for(self, key: str, entry: Entry) -> float:
        """Seconds until `entry` counts as abandoned: 0.0 once this revision has stayed unchanged for
        a whole ttl since this clock first saw it. A new revision (the holder renewed) starts the
        count again, so a live holder is never taken over."""
        now = self.clock()
        seen = self._seen.get(key)
        if seen is None or seen[0] != entry.revision:
            self._seen[key] = (entry.revision, now)
            return self.ttl_s
        return max(self.ttl_s - (now - seen[1]), 0.0)

    async def claim(self, key: str, value: bytes, *, over: Entry | None) -> int | None:
        """Take the lease: create it when `over` is None, else replace `over` (compare-and-set on its
        revision). The new revision, or None when another holder got there first."""
        try:
            if over is None:
                rev = await self.kv.create(key, value)
            else:
                rev = await self.kv.update(key, value, last=over.revision)
        except Exception as exc:
            if not is_cas_failure(exc):
                raise
            return None
        self._seen.pop(key, None)
        return int(rev)

    async def renew(self, key: str, value: bytes, revision: int) -> int | None:
        """Write `value` if the lease is still at `revision` (ours): the new revision, or None when it
        moved (taken over, handed on or removed)."""
        try:
            return int(await self.kv.update(key, value, last=revision))
        except Exception as exc:
            if not is_cas_failure(exc):
                raise  # the server away or refusing the write: not a verdict on who holds it
            return None

    async def release(self, key: str, revision: int) -> bool:
        """Delete the lease if it is still at `revision`; False when it had moved (not ours any more)."""
        try:
            await self.kv.delete(key, last=revision)
        except Exception as exc:
            if not is_cas_failure(exc):
                raise
            return False
        return True


async def drop(kv: KeyValue, key: str) -> None:
    """Remove a lease whoever holds it (whoever ends the work it guards)."""
    try:
        await kv.delete(key)
    except (KeyNotFoundError, KeyDeletedError):
        pass
