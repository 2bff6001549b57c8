"""The object buckets against a real nats-server: bytes round trip in nats-py's format, conditional
puts, series through the digest cache, checkpoints, model versions, and the one-writer series lease."""

from __future__ import annotations

import asyncio
import json

import pandas as pd
import pytest

from ktrdr.cancellation import CancellationToken
from ktrdr.data.calendar import lookup
from ktrdr.data.store import DigestCache, SeriesMeta, digest_hex
from ktrdr.errors import OperationCancelledError, ValidationError
from ktrdr.ib.sim.data import generate_bars
from ktrdr.training.registry import FILES
from ktrdr.transport import objects
from ktrdr.transport.objects import (
    BARS,
    MODELS,
    BarStore,
    CheckpointStore,
    ModelStore,
    ObjectConflict,
    series_lease,
)
from tests.conftest import utc


def bars(start=utc(2024, 1, 2), end=utc(2024, 2, 1), symbol="AAPL", tf="1h") -> pd.DataFrame:
    return generate_bars(lookup(symbol), tf, start, end, seed=0)


async def test_bytes_round_trip_in_nats_py_format_and_a_conditional_put_that_loses_changes_nothing(client):
    js = client.js
    data = bytes(range(256)) * 5000  # 1.28 MB: three chunks
    first = await objects.put(js, BARS, "AAPL/1h", data, conditional=True)
    assert first.chunks == 3 and first.size == len(data)
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
    assert info.state.messages == 2  # replaced and refused chunks purged: one chunk + one meta record
    assert [s.name for s in await objects.list_objects(js, BARS)] == ["AAPL/1h"]
    assert await objects.delete(js, BARS, "AAPL/1h") and await objects.get(js, BARS, "AAPL/1h", max_bytes=9) is None
    assert await objects.list_objects(js, BARS) == [] and not await objects.delete(js, BARS, "AAPL/1h")


async def test_a_series_is_read_through_the_digest_cache_and_deleting_the_cache_loses_nothing(client, tmp_path):
    df = bars()
    writer = BarStore(client.js)  # another host: no cache
    meta = SeriesMeta(symbol="AAPL", timeframe="1h", source="sim", simulated=True, start=None, end=None, rows=len(df),
                      updated_at="")
    stored = await writer.write(df, meta, replaces=None)
    cache = DigestCache(tmp_path / "cache")
    reader = BarStore(client.js, cache)
    got = await reader.read("aapl", "1h")
    pd.testing.assert_frame_equal(got, df, check_freq=False)
    cached = tmp_path / "cache" / f"{digest_hex(stored.digest)}.parquet"
    assert cached.exists() and [p.name for p in (tmp_path / "cache").iterdir()] == [cached.name]
    m = await reader.metadata("AAPL", "1h")
    assert m is not None and m.simulated and m.digest == stored.digest and m.rows == len(df)
    window = await reader.read("AAPL", "1h", utc(2024, 1, 10), utc(2024, 1, 11))
    assert len(window) and window.index.min() >= utc(2024, 1, 10) and window.index.max() < utc(2024, 1, 11)
    cached.unlink()
    pd.testing.assert_frame_equal(await reader.read("AAPL", "1h"), df, check_freq=False)
    assert [s.symbol for s in await reader.list()] == ["AAPL"]


async def test_merge_is_compare_and_set_and_keeps_every_bar(client, tmp_path):
    store = BarStore(client.js, DigestCache(tmp_path / "c"))
    df = bars()
    halves = [df.iloc[::2], df.iloc[1::2]]
    results = await asyncio.gather(*(store.merge("AAPL", "1h", h, "import") for h in halves))
    assert sum(added for added, _ in results) == len(df)
    pd.testing.assert_frame_equal(await store.read("AAPL", "1h"), df, check_freq=False)
    meta = await store.metadata("AAPL", "1h")
    assert meta is not None and meta.source == "import" and not meta.simulated


def test_cache_evicts_the_least_recently_used_and_never_names_a_file_from_anything_but_a_digest(tmp_path):
    import base64
    import hashlib
    import os

    cache = DigestCache(tmp_path, max_bytes=2500)
    digests = ["SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(bytes([i])).digest()).decode() for i in range(3)]
    for i, d in enumerate(digests):
        path = cache.put(d, b"x" * 1000)
        assert path is not None
        os.utime(path, (1000 + i, 1000 + i))
    assert cache.lookup(digests[0]) is None  # the oldest went when the third arrived
    assert cache.lookup(digests[1]) is not None and cache.lookup(digests[2]) is not None
    for bad in ("SHA-256=../../etc/passwd", "../x", "", "SHA-256=" + "A" * 43 + "/"):
        assert cache.path(bad) is None and cache.put(bad, b"x") is None


async def test_checkpoints_are_per_operation_and_refuse_anything_but_an_op_id(client):
    from events.subjects import new_op_id

    ckpts = CheckpointStore(client.js)
    op = new_op_id("training")
    assert await ckpts.get(op) is None
    await ckpts.put(op, b"epoch 1")
    await ckpts.put(op, b"epoch 2")
    assert await ckpts.get(op) == b"epoch 2"
    assert await ckpts.delete(op) and await ckpts.get(op) is None
    for bad in ("../x", "training-1", "x/latest"):
        with pytest.raises(ValidationError):
            await ckpts.put(bad, b"x")


def artifacts(acc: float) -> dict[str, bytes]:
    out = {f: b"{}" for f in FILES}
    out["model.pt"] = b"weights" * 100
    out["metrics.json"] = json.dumps({"test_metrics": {"test_accuracy": acc}}).encode()
    out["metadata.json"] = json.dumps({"op_id": "training-x", "device": "cpu", "simulated": True}).encode()
    return out


async def test_model_versions_are_claimed_atomically_listed_shown_and_pulled_into_a_folder_only(client, tmp_path):
    models = ModelStore(client.js)
    saved = await asyncio.gather(*(models.save("mlp_rsi", ["AAPL"], ["1h"], artifacts(0.1 * i),
                                               result={"training_metrics": {"history": [{"epoch": 1}]}})
                                   for i in range(1, 4)))
    assert sorted(s["version"] for s in saved) == [1, 2, 3]
    rows = await models.list()
    assert [r["name"] for r in rows] == ["mlp_rsi/AAPL_1h_v1", "mlp_rsi/AAPL_1h_v2", "mlp_rsi/AAPL_1h_v3"]
    assert [r["latest"] for r in rows] == [False, False, True] and rows[0]["simulated"] is True
    assert await models.resolve("mlp_rsi") == await models.resolve("mlp_rsi/AAPL_1h") == "mlp_rsi/AAPL_1h_v3"
    shown = await models.show("mlp_rsi/AAPL_1h_v2")
    assert shown["result"]["training_metrics"]["history"] == [{"epoch": 1}] and shown["model_bytes"] == 700
    dest = tmp_path / "pulled"
    dest.mkdir()
    name, paths = await models.pull("mlp_rsi/AAPL_1h", dest)
    assert name == "mlp_rsi/AAPL_1h_v3"
    assert sorted(p.name for p in dest.iterdir()) == sorted([*FILES, "result.json"])
    assert all(p.parent == dest.resolve() for p in paths) and (dest / "model.pt").read_bytes() == b"weights" * 100
    for bad in ("../etc", "mlp_rsi/../../x", "mlp_rsi/AAPL_1h/model.pt", "mlp_rsi/nope_1h"):
        with pytest.raises(ValidationError):
            await models.pull(bad, dest)
    with pytest.raises(ValidationError):
        await models.pull("mlp_rsi", tmp_path / "missing")
    assert (await objects.stat(client.js, MODELS, "mlp_rsi/AAPL_1h_latest")) is not None


async def test_a_second_writer_of_a_series_waits_says_for_whom_and_can_be_cancelled(client, settings):
    first = await series_lease(client.js, "AAPL", "1h", holder="jm-1", op_id="data-20260101T000000000000-aaaaaa",
                               ttl_s=30)
    second = await series_lease(client.js, "aapl", "1h", holder="jm-2", op_id="data-20260101T000000000001-bbbbbb",
                                ttl_s=30)
    waits: list[str] = []
    async with first.held():
        token = CancellationToken()
        task = asyncio.create_task(second.acquire(token, on_wait=lambda rec: waits.append(rec.op_id)))
        while not waits:
            await asyncio.sleep(0.01)
        assert waits == ["data-20260101T000000000000-aaaaaa"] and not task.done()
        token.cancel("user")
        with pytest.raises(OperationCancelledError):
            await task
        task = asyncio.create_task(second.acquire(CancellationToken()))
        await asyncio.sleep(0.3)
        assert not task.done()
    await asyncio.wait_for(task, 10)  # released: the waiter gets it
    assert await second.renew() and not await first.renew()
    await second.release()
    # An earlier attempt of the same operation left it behind: its next attempt takes it at once.
    stale = await series_lease(client.js, "AAPL", "1h", holder="jm-dead", op_id="data-20260101T000000000002-cccccc")
    await stale.acquire()
    retry = await series_lease(client.js, "AAPL", "1h", holder="jm-3", op_id="data-20260101T000000000002-cccccc")
    await asyncio.wait_for(retry.acquire(), 5)
