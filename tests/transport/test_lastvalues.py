"""The last-per-subject reader that lists a KV bucket's live keys (presence: `ktrdr status`, the CLI's
waiting notice): every live key, never a deleted, purged or expired one, and "empty" only when the
server says so (nats-py's kv.keys() once answered "no keys" with four actors alive)."""

from __future__ import annotations

import asyncio

import pytest
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from ktrdr.transport.lastvalues import live_kv_values


async def test_every_live_key_once_with_its_last_value_and_no_deleted_or_purged_key(client):
    js = client.js
    kv = await js.create_key_value(js_api.KeyValueConfig(bucket="LV", history=3))
    assert await live_kv_values(js, "LV") == {}  # made, never written
    for i in range(300):
        await kv.put(f"role.a{i}", b"first")
    for i in range(0, 300, 3):
        await kv.put(f"role.a{i}", b"second")
    await kv.delete("role.a1")
    await kv.purge("role.a2")
    values = await live_kv_values(js, "LV")
    assert len(values) == 298 and "role.a1" not in values and "role.a2" not in values
    assert values["role.a0"] == b"second" and values["role.a4"] == b"first"
    # many readers at once on a busy loop: each sees all of them
    reads = await asyncio.gather(*(live_kv_values(js, "LV") for _ in range(20)))
    assert all(r == values for r in reads)
    for key in list(values):
        await kv.delete(key)
    assert await live_kv_values(js, "LV") == {}


async def test_an_expired_key_is_gone_and_a_missing_bucket_says_so(client):
    js = client.js
    kv = await js.create_key_value(js_api.KeyValueConfig(bucket="LVTTL", history=1, ttl=1.0))
    await kv.put("x", b"1")
    assert await live_kv_values(js, "LVTTL") == {"x": b"1"}
    for _ in range(100):  # the server drops it after its age: wait for that, bounded
        if not await live_kv_values(js, "LVTTL"):
            break
        await asyncio.sleep(0.1)
    assert await live_kv_values(js, "LVTTL") == {}
    with pytest.raises(NotFoundError):
        await live_kv_values(js, "NOPE")
