"""Loading into a partitioned series is bounded by the partitions it touches (issue 20, part 3): the
load plans from the manifest's runs, reads only the partitions its segments fall in, writes only
those and the manifest, and leaves every other partition the very same object; the plan from runs
equals the plan from the bars; a whole read of partitions equals their concatenation."""

from __future__ import annotations

import asyncio
import logging

import msgspec
import numpy as np
import pandas as pd

from ktrdr.cancellation import CancellationToken
from ktrdr.data.bars_store import BarStore, SeriesWriter
from ktrdr.data.calendar import expected_bar_starts, lookup
from ktrdr.data.gaps import find_gaps
from ktrdr.data.loading import DataLoadingJob
from ktrdr.data.partitions import MAX_RUNS_PER_PARTITION, Manifest, runs_of, split
from ktrdr.data.planning import Segment, plan_segments
from ktrdr.data.store import DigestCache, SeriesMeta
from ktrdr.data.window import SeriesWindow
from ktrdr.ib.sim.data import generate_bars
from ktrdr.transport import objects
from tests.conftest import utc

AAPL = lookup("AAPL")


def minute_bars(start, end) -> pd.DataFrame:
    return generate_bars(AAPL, "1m", start, end, seed=0)


def meta_of(df: pd.DataFrame) -> SeriesMeta:
    return SeriesMeta(symbol="AAPL", timeframe="1m", source="sim", simulated=True, start=df.index[0].isoformat(),
                      end=df.index[-1].isoformat(), rows=len(df), updated_at="")


async def _objects(js) -> dict[str, str]:
    return {st.name: st.digest for st in await objects.list_objects(js, objects.BARS)}


async def test_a_load_into_a_multi_partition_series_reads_and_writes_only_the_partitions_it_touches(client, tmp_path):
    full = minute_bars(utc(2024, 1, 2), utc(2024, 4, 1))
    hole = (full.index >= utc(2024, 2, 12)) & (full.index < utc(2024, 2, 14))  # two days missing in February
    store = BarStore(client.js, DigestCache(tmp_path / "cache"))
    _, first = await store.write_series(full[~hole], meta_of(full[~hole]), replaces=None)
    assert first is not None and [e.key for e in first.partitions] == ["2024-01", "2024-02", "2024-03"]
    assert all(e.runs for e in first.partitions)  # the coverage the load plans from
    before = await _objects(client.js)
    written = store.bytes_written

    opened = await store.open_window("AAPL", "1m")
    assert opened is not None
    window, stored = opened
    fetched: list[Segment] = []

    async def fetch(seg: Segment) -> pd.DataFrame:
        fetched.append(seg)
        return minute_bars(seg.start, seg.end)

    async def head():
        return utc(2023, 1, 3)

    writer = SeriesWriter(store, window, stored, every_s=3600, every_segments=10**6, manifest=window.manifest)
    job = DataLoadingJob(window, "AAPL", "1m", "full", utc(2024, 1, 2), utc(2024, 4, 3), fetch=fetch,
                         head_timestamp=head, cancel=CancellationToken(), source="sim", now=utc(2024, 4, 3))
    async with writer.running(logging.getLogger("test")):
        result = await job.run()

    # Planned from the runs: nothing read to plan; the February hole and April 1-2 fetched.
    assert result.gaps_found == 2 and result.bars_added == int(hole.sum()) + len(minute_bars(utc(2024, 4, 1),
                                                                                             utc(2024, 4, 3)))
    assert all(utc(2024, 2, 12) <= s.start < utc(2024, 2, 14) or s.start >= utc(2024, 4, 1) for s in fetched)
    assert window.reads == ["2024-02"]  # the one stored partition a segment fell in, read once
    assert window.dirty_count == 0  # written, then out of memory
    after = await _objects(client.js)
    man = writer.manifest
    assert man is not None
    entries, old = {e.key: e for e in man.partitions}, {e.key: e for e in first.partitions}
    # January and March: the very same objects, byte for byte; February rewritten, April new.
    for key in ("2024-01", "2024-03"):
        assert entries[key] == old[key] and after[entries[key].name] == before[old[key].name]
    assert entries["2024-02"].name != old["2024-02"].name and old["2024-02"].name not in after
    assert set(after) - set(before) == {entries["2024-02"].name, entries["2024-04"].name}
    assert store.bytes_written - written == entries["2024-02"].size + entries["2024-04"].size
    got = await BarStore(client.js).read("AAPL", "1m")
    pd.testing.assert_frame_equal(got, minute_bars(utc(2024, 1, 2), utc(2024, 4, 3)), check_freq=False)
    meta = await store.metadata("AAPL", "1m")
    assert meta is not None and meta.rows == len(got) and meta.end == got.index[-1].isoformat()


def _window(stored: pd.DataFrame, *, runs: bool) -> SeriesWindow:
    parts = split(stored, "1m")
    entries = []
    for key, part in parts.items():
        e = msgspec.structs.replace(
            _entry(key, part), runs=runs_of(pd.DatetimeIndex(part.index), "1m") if runs else None)
        entries.append(e)
    reads = {e.key: parts[e.key] for e in entries}
    return SeriesWindow("AAPL", "1m", Manifest(generation=1, partitions=entries), meta_of(stored),
                        lambda e: reads[e.key])


def _entry(key: str, part: pd.DataFrame):
    from ktrdr.data.partitions import entry

    return entry(key, f"AAPL/1m/{key}.1.00000000", part, "SHA-256=x", 1)


def test_a_plan_from_the_manifests_runs_equals_the_plan_from_the_stored_bars():
    start, end = utc(2024, 1, 2), utc(2024, 5, 1)
    expected = expected_bar_starts(AAPL, "1m", start, end)
    rng = np.random.default_rng(7)
    drop = rng.random(len(expected)) < 0.002  # scattered single bars
    month_edge = (expected >= pd.Timestamp("2024-01-31 20:00", tz="UTC")) & (
        expected < pd.Timestamp("2024-02-01 15:00", tz="UTC"))  # a gap running over a partition boundary
    march = (expected >= utc(2024, 3, 1)) & (expected < utc(2024, 4, 1)) & (np.arange(len(expected)) % 2 == 0)
    keep = ~(drop | month_edge | march)  # March: every other bar, too fragmented to list as runs
    stored = generate_bars(AAPL, "1m", start, end, starts=expected[keep])
    assert runs_of(pd.DatetimeIndex(split(stored, "1m")["2024-03"].index), "1m") is None
    assert MAX_RUNS_PER_PARTITION < int(march.sum())
    gaps = find_gaps(stored.index, AAPL, "1m", start, end, expected=expected)
    want = plan_segments(gaps, "1m", bar_starts=expected)
    for runs in (True, False):  # with runs, and a manifest written before runs existed
        window = _window(stored, runs=runs)
        got_gaps, missing = window.gaps(AAPL, "1m", start, end)
        assert got_gaps == gaps
        assert plan_segments(got_gaps, "1m", bar_starts=missing) == want
        assert list(missing) == list(expected[~keep])
        # Partitions are read only where the manifest cannot say: March (too fragmented), or all.
        assert window.reads == (["2024-03"] if runs else ["2024-01", "2024-02", "2024-03", "2024-04"])


async def test_a_whole_read_of_partitions_equals_their_concatenation(client, tmp_path):
    df = minute_bars(utc(2024, 1, 2), utc(2024, 5, 1))
    _, man = await BarStore(client.js).write_series(df, meta_of(df), replaces=None)
    assert man is not None and len(man.partitions) == 4
    parts = await asyncio.gather(*(BarStore(client.js).read_partition(e) for e in man.partitions))
    cache = DigestCache(tmp_path / "cache")
    for reader in (BarStore(client.js), BarStore(client.js, cache), BarStore(client.js, cache)):  # cold, cached
        got = await reader.read("AAPL", "1m")
        pd.testing.assert_frame_equal(got, pd.concat(parts), check_freq=False)
        pd.testing.assert_frame_equal(got, df, check_freq=False)
        assert got.index.is_monotonic_increasing and not got.index.has_duplicates
    assert len(list((tmp_path / "cache").iterdir())) == 4


def test_a_manifest_with_runs_out_of_order_or_a_bad_chunk_id_is_refused():
    import pytest

    from ktrdr.data.partitions import decode_manifest
    from ktrdr.errors import DataError

    part = minute_bars(utc(2024, 1, 2), utc(2024, 1, 4))
    good = msgspec.structs.replace(_entry("2024-01", part), runs=runs_of(pd.DatetimeIndex(part.index), "1m"))
    assert good.runs is not None and len(good.runs) == 2  # two sessions
    decode_manifest("AAPL/1m", msgspec.json.encode(Manifest(generation=1, partitions=[good])))
    for bad in (msgspec.structs.replace(good, runs=good.runs[::-1]),
                msgspec.structs.replace(good, runs=[(good.runs[0][1], good.runs[0][0])])):
        with pytest.raises(DataError, match="out of order"):
            decode_manifest("AAPL/1m", msgspec.json.encode(Manifest(generation=1, partitions=[bad])))
    raw = msgspec.json.encode(Manifest(generation=1, partitions=[good])).replace(b'"nuid":null', b'"nuid":"a.>"')
    with pytest.raises(DataError, match="invalid"):  # it would name a subject: only [A-Za-z0-9]
        decode_manifest("AAPL/1m", raw)


async def test_a_load_merges_into_a_stored_partition_with_one_default_thread(client, tmp_path):
    """A window's merge blocks its thread on a partition read that runs on the event loop and uses
    the loop's default threads itself: with those all taken by the window's callers, the read could
    never run (a deadlock). The window runs on threads of its own, so with ONE default thread the
    load still reads, merges and writes."""
    full = minute_bars(utc(2024, 1, 2), utc(2024, 2, 1))
    hole = (full.index >= utc(2024, 1, 10)) & (full.index < utc(2024, 1, 12))
    store = BarStore(client.js, DigestCache(tmp_path / "cache"))
    await store.write_series(full[~hole], meta_of(full[~hole]), replaces=None)
    loop = asyncio.get_running_loop()
    from concurrent.futures import ThreadPoolExecutor

    one = ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(one)
    try:
        opened = await store.open_window("AAPL", "1m")
        assert opened is not None
        window, stored = opened

        async def fetch(seg: Segment) -> pd.DataFrame:
            return minute_bars(seg.start, seg.end)

        async def head():
            return utc(2023, 1, 3)

        writer = SeriesWriter(store, window, stored, every_s=3600, every_segments=10**6, manifest=window.manifest)
        job = DataLoadingJob(window, "AAPL", "1m", "full", utc(2024, 1, 2), utc(2024, 2, 1), fetch=fetch,
                             head_timestamp=head, cancel=CancellationToken(), source="sim", now=utc(2024, 2, 1))
        async with writer.running(logging.getLogger("test")):
            result = await asyncio.wait_for(job.run(), 60)
    finally:
        loop.set_default_executor(ThreadPoolExecutor())
        one.shutdown(wait=False)
    assert result.bars_added == int(hole.sum()) and window.reads == ["2024-01"]
    got = await BarStore(client.js).read("AAPL", "1m")
    pd.testing.assert_frame_equal(got, full, check_freq=False)
