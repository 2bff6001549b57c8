"""The object buckets' byte layer against a real nats-server: bytes round trip in nats-py's format,
conditional puts that lose change nothing, replaced chunks are retired (one empty rollup marker each,
no purge), listing and deleting."""

from __future__ import annotations

import hashlib

import pytest

from ktrdr.transport import objects
from ktrdr.transport.objects import BARS, ObjectConflict


async def test_bytes_round_trip_in_nats_py_format_and_a_conditional_put_that_loses_changes_nothing(client):
    js = client.js
    data = bytes(range(256)) * 5000  # 1.28 MB: three chunks
    first = await objects.put(js, BARS, "AAPL/1h", data, conditional=True)
    assert first.chunks == 3 and first.size == len(data)
    assert objects.sha256_hex(first.digest) == hashlib.sha256(data).hexdigest()  # as sha256sum prints it
    assert objects.sha256_hex("MD5=abc") == objects.sha256_hex("SHA-256=!!") == ""
    # nats-py's own ObjectStore reads what we wrote (same subjects, meta record and digest)
    assert (await (await js.object_store(BARS)).get("AAPL/1h")).data == data
    got = await objects.get(js, BARS, "AAPL/1h", max_bytes=10 << 20)
    assert got is not None and bytes(got[0]) == data and got[1].digest == first.digest
    with pytest.raises(ObjectConflict):
        await objects.put(js, BARS, "AAPL/1h", b"late", conditional=True)  # expects "absent"
    second = await objects.put(js, BARS, "AAPL/1h", b"new", conditional=True, replaces=first)
    with pytest.raises(ObjectConflict):
        await objects.put(js, BARS, "AAPL/1h", b"stale writer", conditional=True, replaces=first)
    got = await objects.get(js, BARS, "AAPL/1h", max_bytes=100)
    assert got is not None and bytes(got[0]) == b"new" and got[1].seq == second.seq
    info = await js.stream_info("OBJ_BARS")
    # One chunk + one meta record live; the replaced object's 3 chunks and each refused put's chunk are
    # retired by a rollup: one empty marker per retired object is all that stays of them.
    assert info.state.messages == 2 + 3
    for retired in (first.nuid,):
        marker = await js.get_last_msg("OBJ_BARS", f"$O.BARS.C.{retired}")
        assert marker.data in (b"", None) and info.state.bytes < 2000
    assert [s.name for s in await objects.list_objects(js, BARS)] == ["AAPL/1h"]
    assert await objects.delete(js, BARS, "AAPL/1h") and await objects.get(js, BARS, "AAPL/1h", max_bytes=9) is None
    assert await objects.list_objects(js, BARS) == [] and not await objects.delete(js, BARS, "AAPL/1h")
