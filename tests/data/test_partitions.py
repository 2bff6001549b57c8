"""A BARS series in partitions against a real nats-server: an append rewrites only the partitions its
bars fall in, a range read reads only its partitions, a whole-series object written the old way is read
and migrated on the first write, and a writer killed with -9 between its partitions and its manifest
leaves the old series readable (what it wrote is swept)."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path

import msgspec
import pandas as pd
import pytest

from ktrdr.data.bars_store import BarStore, SeriesWriter
from ktrdr.data.calendar import lookup
from ktrdr.data.partitions import MANIFEST_HEADER, keys_of, period_of, split
from ktrdr.data.store import DigestCache, SeriesBuffer, SeriesMeta, digest_hex
from ktrdr.errors import DataError
from ktrdr.ib.sim.data import generate_bars
from ktrdr.transport import objects
from tests.conftest import utc


def minute_bars(start=utc(2024, 1, 2), end=utc(2024, 4, 1)) -> pd.DataFrame:
    return generate_bars(lookup("AAPL"), "1m", start, end, seed=0)


def meta_of(df: pd.DataFrame, tf: str = "1m") -> SeriesMeta:
    return SeriesMeta(symbol="AAPL", timeframe=tf, source="sim", simulated=True, start=df.index[0].isoformat(),
                      end=df.index[-1].isoformat(), rows=len(df), updated_at="")


async def _bars_objects(js) -> dict[str, str]:
    return {st.name: st.digest for st in await objects.list_objects(js, objects.BARS)}


def test_periods_keep_a_partition_small_and_split_cuts_a_series_by_them():
    assert (period_of("1m"), period_of("30m"), period_of("1h"), period_of("4h"), period_of("1d")) == (
        "month", "month", "year", "year", "all")
    df = minute_bars()
    parts = split(df, "1m")
    assert list(parts) == ["2024-01", "2024-02", "2024-03"]
    assert sum(len(p) for p in parts.values()) == len(df)
    assert keys_of(df.index[-5:], "1m") == {"2024-03"}


async def test_an_append_rewrites_only_the_partition_its_bars_fall_in(client, tmp_path):
    df = minute_bars()
    store = BarStore(client.js, DigestCache(tmp_path / "c"))
    stored = await store.load("AAPL", "1m")
    buffer = SeriesBuffer("AAPL", "1m", stored.df, stored.meta)
    buffer.merge("AAPL", "1m", df, "sim")
    snap, meta, version = buffer.snapshot()
    assert meta is not None
    st, first = await store.write_series(snap, meta, replaces=None, touched=buffer.touched_since(0))
    assert first is not None and len(first.partitions) == 3
    before = await _bars_objects(client.js)
    written = store.bytes_written

    day = minute_bars(utc(2024, 4, 1), utc(2024, 4, 2))  # a new month
    late = minute_bars(utc(2024, 3, 28), utc(2024, 3, 29)).iloc[:10] * 1.01  # corrects 10 bars of March
    buffer.merge("AAPL", "1m", pd.concat([late, day]), "sim")
    snap, meta, _ = buffer.snapshot()
    assert meta is not None
    _, second = await store.write_series(snap, meta, replaces=st, manifest=first, touched=buffer.touched_since(version))
    assert second is not None
    after = await _bars_objects(client.js)
    entries = {e.key: e for e in second.partitions}
    old = {e.key: e for e in first.partitions}
    # January and February are the very same objects; March and April are new; the old March is gone.
    assert entries["2024-01"] == old["2024-01"] and entries["2024-02"] == old["2024-02"]
    assert entries["2024-03"].name != old["2024-03"].name and "2024-04" in entries
    assert old["2024-03"].name not in after and old["2024-01"].name in after
    assert set(after) - set(before) == {entries["2024-03"].name, entries["2024-04"].name}
    assert store.bytes_written - written == entries["2024-03"].size + entries["2024-04"].size
    got = await BarStore(client.js).read("AAPL", "1m")
    pd.testing.assert_frame_equal(got, snap, check_freq=False)
    assert got.loc[late.index[0], "close"] == late.iloc[0]["close"]


async def test_a_range_read_reads_only_the_partitions_of_its_range(client, tmp_path):
    df = minute_bars()
    _, man = await BarStore(client.js).write_series(df, meta_of(df), replaces=None)
    assert man is not None
    cache_dir = tmp_path / "reader"
    reader = BarStore(client.js, DigestCache(cache_dir))
    got = await reader.read("AAPL", "1m", utc(2024, 2, 5), utc(2024, 2, 10))
    pd.testing.assert_frame_equal(got, df[(df.index >= utc(2024, 2, 5)) & (df.index < utc(2024, 2, 10))],
                                  check_freq=False)
    feb = next(e for e in man.partitions if e.key == "2024-02")
    assert [p.name for p in cache_dir.iterdir()] == [f"{digest_hex(feb.digest)}.parquet"]


async def test_a_whole_series_object_written_the_old_way_is_read_and_migrated_on_first_write(client):
    df = minute_bars(utc(2024, 1, 2), utc(2024, 3, 1))
    old = BarStore(client.js, partitioned=False)
    legacy = await old.write(df, meta_of(df), replaces=None)
    assert legacy.header(MANIFEST_HEADER) is None
    store = BarStore(client.js)
    current = await store.load("AAPL", "1m")
    assert current.manifest is None and current.meta is not None and current.meta.rows == len(df)
    pd.testing.assert_frame_equal(current.df, df, check_freq=False)
    pd.testing.assert_frame_equal(await store.read("AAPL", "1m", utc(2024, 2, 1)), df[df.index >= utc(2024, 2, 1)],
                                  check_freq=False)
    added, st = await store.merge("AAPL", "1m", minute_bars(utc(2024, 3, 1), utc(2024, 3, 5)), "sim")
    assert added > 0 and st.header(MANIFEST_HEADER) == "1"
    migrated = await store.load("AAPL", "1m")
    assert migrated.manifest is not None and [e.key for e in migrated.manifest.partitions] == [
        "2024-01", "2024-02", "2024-03"]
    assert len(migrated.df) == len(df) + added
    pd.testing.assert_frame_equal(migrated.df[migrated.df.index < utc(2024, 3, 1)], df, check_freq=False)


_KILLED_WRITER = textwrap.dedent("""
    import asyncio, os, signal, sys
    from pathlib import Path
    import pandas as pd
    from ktrdr.client import Client
    from ktrdr.data.bars_store import BarStore
    from ktrdr.transport import objects
    from tests.conftest import make_settings, utc
    from tests.data.test_partitions import minute_bars

    real_put, puts = objects.put, []

    async def put(js, bucket, name, data, **kw):
        if name == "AAPL/1m":  # the manifest: the job-manager dies before it is stored
            os.kill(os.getpid(), signal.SIGKILL)
        puts.append(name)
        return await real_put(js, bucket, name, data, **kw)

    async def main():
        async with Client(make_settings(Path(sys.argv[1]), sys.argv[2])) as c:
            store = BarStore(c.js)
            objects.put = put
            await store.merge("AAPL", "1m", minute_bars(utc(2024, 3, 20), utc(2024, 4, 3)), "sim")

    asyncio.run(main())
""")


async def test_a_writer_killed_before_its_manifest_leaves_the_old_series_readable_and_its_partitions_are_swept(
        client, settings, tmp_path):
    df = minute_bars()
    store = BarStore(client.js)
    _, man = await store.write_series(df, meta_of(df), replaces=None)
    before = await _bars_objects(client.js)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _KILLED_WRITER, str(settings.home),
                                                settings.nats_url, env=env, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == -9, err.decode()
    left = await _bars_objects(client.js)
    assert set(before) < set(left)  # its new March and April partitions were stored, then it died
    current = await store.load("AAPL", "1m")
    assert current.manifest == man and current.stored is not None and current.stored.digest == before["AAPL/1m"]
    pd.testing.assert_frame_equal(current.df, df, check_freq=False)
    # What it left is unreferenced but of a newer generation (a writer still at work, for all a sweep
    # knows): left alone until the next write moves the manifest past it.
    assert await store.sweep_partitions() == 0
    await store.merge("AAPL", "1m", minute_bars(utc(2024, 4, 1), utc(2024, 4, 2)), "sim")
    assert await store.sweep_partitions() == 2
    after = await _bars_objects(client.js)
    listed = {e.name for e in (await store.load("AAPL", "1m")).manifest.partitions}  # type: ignore[union-attr]
    assert set(after) == listed | {"AAPL/1m"}


async def test_a_manifest_naming_another_series_objects_is_refused(client):
    df = minute_bars(utc(2024, 1, 2), utc(2024, 1, 10))
    st, man = await BarStore(client.js).write_series(df, meta_of(df), replaces=None)
    assert man is not None
    other = msgspec.structs.replace(man.partitions[0], name="MSFT/1m/2024-01.1.00000000")
    bad = msgspec.structs.replace(man, partitions=[other])
    await objects.put(client.js, objects.BARS, "AAPL/1m", msgspec.json.encode(bad), replaces=st, conditional=True,
                      headers={k: v[0] if isinstance(v, list) else v for k, v in st.headers.items()})
    with pytest.raises(DataError, match="not one of its partitions"):
        await BarStore(client.js).load("AAPL", "1m")


async def test_the_load_writer_stores_only_what_its_merges_touched_between_flushes(client):
    df = minute_bars()
    store = BarStore(client.js)
    await store.write_series(df, meta_of(df), replaces=None)
    stored = await store.load("AAPL", "1m")
    buffer = SeriesBuffer("AAPL", "1m", stored.df, stored.meta)
    writer = SeriesWriter(store, buffer, stored.stored, every_s=3600, every_segments=10**6, manifest=stored.manifest)
    base = store.bytes_written
    buffer.merge("AAPL", "1m", minute_bars(utc(2024, 4, 1), utc(2024, 4, 3)), "sim")
    await writer.flush()
    april = next(e for e in writer.manifest.partitions if e.key == "2024-04")  # type: ignore[union-attr]
    assert store.bytes_written - base == april.size  # the new month only: nothing else was rewritten
    buffer.merge("AAPL", "1m", minute_bars(utc(2024, 1, 3), utc(2024, 1, 4)) * 1.02, "sim")
    await writer.flush()
    assert writer.manifest is not None and writer.writes == 2
    january = next(e for e in writer.manifest.partitions if e.key == "2024-01")
    assert store.bytes_written - base == april.size + january.size
    pd.testing.assert_frame_equal(await BarStore(client.js).read("AAPL", "1m"), buffer.frame(), check_freq=False)


async def test_a_whole_rewrite_without_the_manifest_leaves_no_partition_behind(client):
    df = minute_bars()
    store = BarStore(client.js)
    st, _ = await store.write_series(df, meta_of(df), replaces=None)
    await store.write_series(df.iloc[: len(df) // 2], meta_of(df.iloc[: len(df) // 2]), replaces=st)
    current = await store.load("AAPL", "1m")
    assert current.manifest is not None
    assert set(await _bars_objects(client.js)) == {e.name for e in current.manifest.partitions} | {"AAPL/1m"}
    pd.testing.assert_frame_equal(current.df, df.iloc[: len(df) // 2], check_freq=False)
