"""Validation, repair and CSV import/export scenarios."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ktrdr.data.csv_io import import_csv
from ktrdr.data.store import DataStore
from ktrdr.data.validation import repair_bars, validate_bars
from ktrdr.errors import ValidationError
from tests.data.conftest import calendar_bars, make_bars


def _dirty() -> pd.DataFrame:
    idx = pd.date_range("2024-01-01", periods=8, freq="h", tz="UTC")
    df = make_bars(idx)
    df.iloc[1, df.columns.get_loc("high")] = df["low"].iloc[1] - 5  # high < low
    df.iloc[2, df.columns.get_loc("volume")] = -3.0
    df.iloc[3, df.columns.get_loc("close")] = np.nan
    df.iloc[4, df.columns.get_loc("open")] = 0.0
    df = pd.concat([df, df.iloc[[5]] * 1.01])  # duplicate of row 5, newer values
    return df.iloc[[0, 2, 1, 3, 4, 5, 6, 7, 8]]  # unsorted


def test_clean_bars_have_no_issues() -> None:
    assert validate_bars(calendar_bars("AAPL", "1h", "2024-06-03", "2024-06-08")) == []


def test_each_problem_is_reported_with_its_row_and_timestamp() -> None:
    df = _dirty()
    kinds = {i.kind for i in validate_bars(df)}
    assert kinds == {
        "high_low_inconsistent",
        "negative_volume",
        "missing_price",
        "non_positive_price",
        "duplicate",
        "unsorted",
    }
    neg = next(i for i in validate_bars(df) if i.kind == "negative_volume")
    assert neg.row == 1 and neg.timestamp == pd.Timestamp("2024-01-01 02:00", tz="UTC")


def test_repair_applies_stated_methods_and_counts_them() -> None:
    fixed, report = repair_bars(_dirty())
    assert validate_bars(fixed) == []
    assert report.counts == {
        "missing_price": 1,
        "non_positive_price": 1,
        "duplicate": 1,
        "unsorted": 2,  # rows 1/2 swapped, and the kept (last) duplicate sits after 07:00
        "high_low_inconsistent": 1,
        "negative_volume": 1,
    }
    assert len(fixed) == 6 and fixed.index.is_monotonic_increasing
    assert fixed.loc[pd.Timestamp("2024-01-01 05:00", tz="UTC"), "close"] == pytest.approx(100.05 * 1.01)
    assert "kept the last" in report.to_dict()["methods"]["duplicate"]  # type: ignore[index]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bars.csv"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("row", "reason", "text"),
    [
        (3, "unparseable date", "Date,Open,High,Low,Close,Volume\n2024-01-02,1,2,1,1,5\n2024-02-30,1,2,1,1,5\n"),
        (2, "non-numeric price", "date,open,high,low,close,volume\n2024-01-02,1,abc,1,1,5\n"),
        (
            4,
            "high < low",
            "timestamp,open,high,low,close,volume\n2024-01-02,1,2,1,1,5\n2024-01-03,1,2,1,1,5\n2024-01-04,1,1,2,1,5\n",
        ),
        (3, "negative volume", "date,open,high,low,close,volume\n2024-01-02,1,2,1,1,5\n2024-01-03,1,2,1,1,-5\n"),
        (3, "duplicate timestamp", "date,open,high,low,close,volume\n2024-01-02,1,2,1,1,5\n2024-01-02,1,2,1,1,5\n"),
    ],
)
def test_bad_csv_row_is_reported_with_its_line_number(tmp_path: Path, row: int, reason: str, text: str) -> None:
    with pytest.raises(ValidationError) as e:
        import_csv(_write(tmp_path, text))
    assert f"row {row}: {reason}" in str(e.value)


def test_csv_missing_a_column_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"missing column.*volume"):
        import_csv(_write(tmp_path, "date,open,high,low,close\n2024-01-02,1,2,1,1\n"))


def test_rejected_import_stores_nothing(tmp_path: Path) -> None:
    store = DataStore(tmp_path)
    bad = _write(tmp_path, "date,open,high,low,close,volume\nx,1,2,1,1,5\n")
    with pytest.raises(ValidationError):
        store.write("AAPL", "1d", import_csv(bad), "import")
    assert store.list_series() == []


def test_exported_series_round_trips_through_import(tmp_path: Path) -> None:
    store = DataStore(tmp_path)
    bars = calendar_bars("EURUSD", "15m", "2024-03-01", "2024-03-12")
    bars["close"] = bars["close"] / 3  # awkward floats must survive
    bars["high"] = bars[["high", "close"]].max(axis=1)
    bars["low"] = bars[["low", "close"]].min(axis=1)
    store.write("EURUSD", "15m", bars, "sim")
    out = tmp_path / "out" / "eurusd.csv"
    assert store.export_csv("EURUSD", "15m", out) == len(bars)
    pd.testing.assert_frame_equal(import_csv(out), bars, check_freq=False)


def test_naive_times_are_utc_and_offsets_are_converted(tmp_path: Path) -> None:
    df = import_csv(
        _write(
            tmp_path,
            "Datetime,Open,High,Low,Close,Volume\n2024-01-02 10:00,1,2,1,1,5\n2024-01-02T10:00:00-05:00,1,2,1,1,5\n",
        )
    )
    assert list(df.index) == [pd.Timestamp("2024-01-02 10:00", tz="UTC"), pd.Timestamp("2024-01-02 15:00", tz="UTC")]
