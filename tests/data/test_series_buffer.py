"""SeriesBuffer (what a load merges into before it is written to BARS) merges like DataStore: counts
new timestamps, the newest bar wins, the source becomes mixed, simulated sticks; many segments and
concurrent merges lose nothing. Both are the SeriesStore a DataLoadingJob loads into."""

from __future__ import annotations

import threading

import pandas as pd

from ktrdr.data.store import DataStore, SeriesBuffer, SeriesStore
from tests.data.conftest import calendar_bars


def test_the_buffer_and_the_local_store_are_both_series_stores(tmp_path) -> None:
    # What DataLoadingJob calls, by name (the type checker checks the signatures).
    assert isinstance(SeriesBuffer("AAPL", "1h"), SeriesStore) and isinstance(DataStore(tmp_path), SeriesStore)
    assert not isinstance(object(), SeriesStore)


def test_merges_like_the_local_store(tmp_path) -> None:
    bars = calendar_bars("AAPL", "1h", "2024-06-03", "2024-06-20")
    buf, store = SeriesBuffer("AAPL", "1h"), DataStore(tmp_path)
    assert buf.metadata("AAPL", "1h") is None and buf.covered_range("AAPL", "1h") is None
    for part, source in ((bars.iloc[:40], "import"), (bars.iloc[30:], "sim"), (bars.iloc[:5] * 2, "ib")):
        assert buf.merge("AAPL", "1h", part, source) == store.merge("AAPL", "1h", part, source)
    pd.testing.assert_frame_equal(buf.read("AAPL", "1h"), store.read("AAPL", "1h"), check_freq=False)
    a, b = buf.metadata("AAPL", "1h"), store.metadata("AAPL", "1h")
    assert a is not None and b is not None
    assert (a.source, a.simulated, a.rows, a.start, a.end) == (b.source, b.simulated, b.rows, b.start, b.end)
    assert a.source == "mixed" and a.simulated
    assert buf.covered_range("AAPL", "1h") == store.covered_range("AAPL", "1h")


def test_many_segments_and_concurrent_merges_lose_nothing() -> None:
    bars = calendar_bars("EURUSD", "1h", "2024-01-01", "2024-04-01")
    seed = bars.iloc[::3]
    buf = SeriesBuffer("EURUSD", "1h", seed, None)
    rest = bars.drop(seed.index)
    chunks = [rest.iloc[i::100] for i in range(100)]  # more than the buffer keeps aside before folding
    barrier = threading.Barrier(4)
    added: list[int] = []

    def work(part: list[pd.DataFrame]) -> None:
        barrier.wait()
        for c in part:
            added.append(buf.merge("EURUSD", "1h", pd.concat([c, seed.iloc[:3]]), "sim"))

    threads = [threading.Thread(target=work, args=(chunks[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(added) == len(rest)
    df, meta, version = buf.snapshot()
    pd.testing.assert_frame_equal(df, bars, check_freq=False)
    assert meta is not None and meta.rows == len(bars) and version == 100
