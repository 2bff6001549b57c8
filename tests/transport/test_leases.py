"""LeaseBucket against a real nats-server: create and compare-and-set claims, renewals that tell a lost
race from anything else by the error's type, and the silence count on the caller's own clock."""

from __future__ import annotations

import pytest
from nats.js import api as js_api
from nats.js.errors import APIError, KeyWrongLastSequenceError

from events import subjects
from ktrdr.transport.leases import LeaseBucket, drop, is_cas_failure


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_only_a_wrong_last_sequence_counts_as_a_lost_race_whatever_the_text_says():
    assert is_cas_failure(KeyWrongLastSequenceError(description="anything"))
    assert is_cas_failure(APIError(code=400, err_code=10071, description="wrong last sequence: 7"))
    assert is_cas_failure(APIError(code=400, err_code=10164, description="wrong last sequence"))
    assert not is_cas_failure(APIError(code=400, err_code=10054, description="wrong last sequence, key exists"))
    assert not is_cas_failure(RuntimeError("nats: wrong last sequence; key exists"))


async def test_claims_are_compare_and_set_and_a_release_of_a_moved_lease_changes_nothing(client):
    kv = await client.js.key_value(subjects.LEASES_BUCKET)
    a, b = LeaseBucket(kv, 10), LeaseBucket(kv, 10)
    rev = await a.claim("k", b"a", over=None)
    assert rev is not None and await b.claim("k", b"b", over=None) is None  # already there
    seen = await b.read("k")
    assert seen is not None and seen.value == b"a" and seen.revision == rev
    renewed = await a.renew("k", b"a", rev)
    assert renewed is not None and renewed > rev
    assert await b.claim("k", b"b", over=seen) is None  # the revision b read is gone
    assert await a.renew("k", b"a", rev) is None  # a stale revision: not ours any more
    assert not await a.release("k", rev)  # nor is deleting it
    assert (await b.read("k")) is not None
    assert await a.release("k", renewed) and await b.read("k") is None
    assert await b.claim("k", b"b", over=None) is not None  # a deleted key is created again
    await drop(kv, "k")
    await drop(kv, "k")  # twice: nothing to drop is fine
    assert await b.read("k") is None


async def test_silence_counts_one_revision_for_a_whole_ttl_on_the_callers_clock(client):
    kv = await client.js.key_value(subjects.LEASES_BUCKET)
    holder, clock = LeaseBucket(kv, 10), FakeClock()
    waiter = LeaseBucket(kv, 10, clock=clock)
    rev = await holder.claim("k", b"h", over=None)
    assert rev is not None
    entry = await waiter.read("k")
    assert entry is not None and waiter.silent_for("k", entry) == 10  # first sight starts the count
    clock.now += 4
    assert waiter.silent_for("k", entry) == 6
    rev = await holder.renew("k", b"h", rev)  # the holder is alive: a new revision restarts the count
    assert rev is not None
    clock.now += 9
    entry = await waiter.read("k")
    assert entry is not None and waiter.silent_for("k", entry) == 10
    clock.now += 10
    assert waiter.silent_for("k", entry) == 0.0
    assert await waiter.claim("k", b"w", over=entry) is not None
    assert await holder.renew("k", b"h", rev) is None  # taken over: the holder's renewal says so


async def test_a_write_the_server_refuses_raises_instead_of_reading_as_a_lost_race(client):
    tiny = await client.js.create_key_value(js_api.KeyValueConfig(bucket="TINY", max_value_size=64))
    bucket = LeaseBucket(tiny, 10)
    with pytest.raises(APIError):
        await bucket.claim("k", b"x" * 200, over=None)
    rev = await bucket.claim("k", b"ok", over=None)
    assert rev is not None
    with pytest.raises(APIError):
        await bucket.renew("k", b"x" * 200, rev)
