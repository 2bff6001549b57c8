"""CSV import: a user's bar file into a store-shaped frame, or a ValidationError naming the bad row.

Accepted: a time column named timestamp/datetime/date/time (or the first, unnamed column, as written
by `DataFrame.to_csv`), and open/high/low/close/volume columns; names are case-insensitive. Naive
times are UTC; times with an offset are converted to UTC. Rows may be in any order (the result is
sorted). Row numbers in errors are file lines: the header is line 1. Nothing is stored here; the
caller stores the frame only after a successful import.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ktrdr.data.store import COLUMNS, normalize_frame
from ktrdr.errors import ValidationError

_TIME_NAMES = ("timestamp", "datetime", "date", "time", "")
_MAX_REPORTED = 5


def import_csv(path: Path | str) -> pd.DataFrame:
    p = Path(path)
    try:
        raw = pd.read_csv(p, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except FileNotFoundError:
        raise ValidationError(f"{p}: file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValidationError(f"{p}: not a readable CSV: {e}") from None
    if raw.dropna(how="all").empty or (raw.apply(lambda col: col.str.strip()) == "").all(axis=None):
        raise ValidationError(f"{p}: no rows (an empty CSV)")
    cols = {str(c).strip().lower(): c for c in raw.columns}
    cols = {("" if k.startswith("unnamed:") else k): v for k, v in cols.items()}
    time_col = next((cols[n] for n in _TIME_NAMES if n in cols), None)
    if time_col is None:
        raise ValidationError(f"{p}: missing column: a timestamp, datetime or date column")
    missing = [c for c in COLUMNS if c not in cols]
    if missing:
        raise ValidationError(f"{p}: missing column(s): {', '.join(missing)}")
    # Keep file line numbers: row i of the frame is line i + 2; fully blank lines are skipped.
    blank = (raw.apply(lambda col: col.str.strip()) == "").all(axis=1)
    raw = raw[~blank.to_numpy()]
    lines = raw.index.to_numpy() + 2
    errors: list[str] = []

    def fail(mask: np.ndarray | np.bool_, reason: str, values: pd.Series | None = None) -> None:
        for i in np.flatnonzero(mask)[:_MAX_REPORTED]:
            shown = f" {values.iloc[i]!r}" if values is not None else ""
            errors.append(f"row {lines[i]}: {reason}{shown}")

    times_s = raw[time_col].str.strip()
    if len(times_s) and times_s.str.fullmatch(r"\d{9,13}").all():
        unit = "ms" if times_s.str.len().max() > 10 else "s"  # epoch seconds or milliseconds
        ts = pd.to_datetime(times_s.astype("int64"), unit=unit, utc=True)
    else:
        ts = pd.to_datetime(times_s, utc=True, errors="coerce", format="mixed")
    fail(ts.isna().to_numpy(), "unparseable date", times_s)
    values: dict[str, np.ndarray] = {}
    for c in COLUMNS:
        s = raw[cols[c]].str.strip()
        num = pd.to_numeric(s, errors="coerce")
        what = "price" if c != "volume" else "volume"
        fail((s == "").to_numpy(), f"missing {c}")
        fail((num.isna() & (s != "")).to_numpy(), f"non-numeric {what} in {c}:", s)
        values[c] = num.to_numpy(dtype="float64")
    if not errors:
        o, h, lo, cl, v = (values[c] for c in COLUMNS)
        fail((np.vstack([o, h, lo, cl]) <= 0).any(axis=0), "non-positive price")
        fail(h < lo, "high < low")
        fail(v < 0, "negative volume")
        fail(pd.DatetimeIndex(ts).duplicated(keep="first"), "duplicate timestamp", times_s)
    if errors:
        more = f" (first {_MAX_REPORTED} per reason shown)" if len(errors) >= _MAX_REPORTED else ""
        raise ValidationError(f"{p}: " + "; ".join(errors) + more)
    df = pd.DataFrame(values, index=pd.DatetimeIndex(ts, name="timestamp"))
    return normalize_frame(df).sort_index()
