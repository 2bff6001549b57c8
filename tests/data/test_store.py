"""DataStore scenarios: round trips, atomic writes under a crash, concurrent merges."""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
import pytest

from ktrdr.data import store as store_mod
from ktrdr.data.store import COLUMNS, DataStore
from tests.data.conftest import calendar_bars


@pytest.fixture
def store(tmp_path: Path) -> DataStore:
    return DataStore(tmp_path)


def test_nothing_stored_reads_an_empty_frame_with_the_right_columns(store: DataStore) -> None:
    df = store.read("AAPL", "1h")
    assert df.empty and list(df.columns) == list(COLUMNS)
    assert store.metadata("AAPL", "1h") is None and store.covered_range("AAPL", "1h") is None


def test_merge_adds_only_new_bars_and_records_metadata(store: DataStore, tmp_path: Path) -> None:
    bars = calendar_bars("AAPL", "1h", "2024-06-03", "2024-06-08")
    assert store.merge("aapl", "1h", bars.iloc[:20], "sim") == 20
    assert store.merge("AAPL", "1h", bars.iloc[10:], "sim") == len(bars) - 20
    got = store.read("AAPL", "1h")
    pd.testing.assert_frame_equal(got, bars, check_freq=False)
    meta = store.metadata("AAPL", "1h")
    assert meta is not None and meta.rows == len(bars) and meta.simulated and meta.source == "sim"
    assert (tmp_path / "data" / "AAPL" / "1h.parquet").exists()
    assert [m.symbol for m in store.list_series()] == ["AAPL"]
    assert store.covered_range("AAPL", "1h") == (bars.index[0], bars.index[-1])


def test_merge_from_another_source_marks_series_mixed_and_newest_wins(store: DataStore) -> None:
    bars = calendar_bars("AAPL", "1d", "2024-01-01", "2024-02-01")
    store.write("AAPL", "1d", bars, "import")
    newer = bars.iloc[:3] * 2
    assert store.merge("AAPL", "1d", newer, "ib") == 0
    assert store.read("AAPL", "1d")["close"].iloc[0] == newer["close"].iloc[0]
    assert store.metadata("AAPL", "1d").source == "mixed"  # type: ignore[union-attr]


def test_crash_mid_write_keeps_the_old_series(store: DataStore, monkeypatch: pytest.MonkeyPatch) -> None:
    bars = calendar_bars("AAPL", "1h", "2024-06-03", "2024-06-08")
    store.write("AAPL", "1h", bars, "ib")

    def crash(df: pd.DataFrame, f: object) -> None:
        f.write(b"PAR1 half a file")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(store_mod, "_write_parquet", crash)
    more = calendar_bars("AAPL", "1h", "2024-06-10", "2024-06-12")
    with pytest.raises(OSError, match="disk full"):
        store.merge("AAPL", "1h", more, "ib")
    monkeypatch.undo()
    pd.testing.assert_frame_equal(store.read("AAPL", "1h"), bars, check_freq=False)
    assert store.metadata("AAPL", "1h").rows == len(bars)  # type: ignore[union-attr]
    leftovers = [p.name for p in (store.root / "AAPL").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_concurrent_merges_from_threads_lose_nothing(store: DataStore) -> None:
    bars = calendar_bars("EURUSD", "1h", "2024-01-01", "2024-03-01")
    chunks = [bars.iloc[i::8] for i in range(8)]
    barrier = threading.Barrier(len(chunks))

    def work(chunk: pd.DataFrame) -> None:
        barrier.wait()
        store.merge("EURUSD", "1h", chunk, "sim")

    threads = [threading.Thread(target=work, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = store.read("EURUSD", "1h")
    assert len(got) == len(bars) and got.index.equals(bars.index)


def test_read_filters_by_range(store: DataStore) -> None:
    bars = calendar_bars("AAPL", "1d", "2024-01-01", "2024-02-01")
    store.write("AAPL", "1d", bars, "ib")
    got = store.read("AAPL", "1d", "2024-01-10", "2024-01-20")
    assert got.index.min() >= pd.Timestamp("2024-01-10", tz="UTC")
    assert got.index.max() < pd.Timestamp("2024-01-20", tz="UTC") and len(got) == 7  # Jan 15 is MLK day
