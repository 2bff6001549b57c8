"""BarStore against a real nats-server: series through the digest cache, compare-and-set merges that
keep every bar, and a cache that names files only from digests."""

from __future__ import annotations

import asyncio

import pandas as pd

from ktrdr.data.bars_store import BarStore
from ktrdr.data.calendar import lookup
from ktrdr.data.store import DigestCache, SeriesMeta, digest_hex
from ktrdr.ib.sim.data import generate_bars
from tests.conftest import utc


def bars(start=utc(2024, 1, 2), end=utc(2024, 2, 1), symbol="AAPL", tf="1h") -> pd.DataFrame:
    return generate_bars(lookup(symbol), tf, start, end, seed=0)


async def test_a_series_is_read_through_the_digest_cache_and_deleting_the_cache_loses_nothing(client, tmp_path):
    df = bars()
    writer = BarStore(client.js)  # another host: no cache
    meta = SeriesMeta(symbol="AAPL", timeframe="1h", source="sim", simulated=True, start=None, end=None, rows=len(df),
                      updated_at="")
    stored, manifest = await writer.write_series(df, meta, replaces=None)
    assert manifest is not None and [e.key for e in manifest.partitions] == ["2024"]  # 1h: a year a partition
    cache = DigestCache(tmp_path / "cache")
    reader = BarStore(client.js, cache)
    got = await reader.read("aapl", "1h")
    pd.testing.assert_frame_equal(got, df, check_freq=False)
    cached = tmp_path / "cache" / f"{digest_hex(manifest.partitions[0].digest)}.parquet"
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


async def test_a_damaged_cached_partition_is_only_a_miss_and_is_read_again_from_the_server(client, tmp_path):
    df = bars(utc(2023, 11, 1), utc(2024, 2, 1))  # two yearly partitions, both cached on the first read
    meta = SeriesMeta(symbol="AAPL", timeframe="1h", source="sim", simulated=True, start=None, end=None, rows=len(df),
                      updated_at="")
    _, manifest = await BarStore(client.js).write_series(df, meta, replaces=None)
    assert manifest is not None and len(manifest.partitions) == 2
    cache = DigestCache(tmp_path / "cache")
    reader = BarStore(client.js, cache)
    pd.testing.assert_frame_equal(await reader.read("AAPL", "1h"), df, check_freq=False)
    damaged = tmp_path / "cache" / f"{digest_hex(manifest.partitions[0].digest)}.parquet"
    damaged.write_bytes(b"not parquet")
    pd.testing.assert_frame_equal(await reader.read("AAPL", "1h"), df, check_freq=False)
    assert damaged.exists() and damaged.read_bytes() != b"not parquet"  # fetched again and cached again
