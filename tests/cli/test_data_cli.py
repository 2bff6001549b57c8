"""`ktrdr data import/export/show` as a user runs them (subprocess, KTRDR_HOME in a temp folder): a bad
CSV is rejected with its row and reason and leaves the stored series byte-for-byte as it was."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from ktrdr.data.calendar import lookup
from ktrdr.data.store import DataStore
from ktrdr.ib.sim.data import generate_bars


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    env["KTRDR_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "ktrdr", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def fingerprint(home: Path) -> dict[str, str]:
    files = sorted(p for p in (home / "data").rglob("*") if p.is_file())
    return {str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_bad_csv_import_is_rejected_with_row_and_reason_and_the_stored_series_is_untouched(tmp_path: Path):
    home = tmp_path / "home"
    bars = generate_bars(lookup("AAPL"), "1h", datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC),
                         seed=0)
    DataStore(home).write("AAPL", "1h", bars, source="sim")
    before = fingerprint(home)
    assert before

    good = tmp_path / "good.csv"
    assert run(home, "data", "export", "AAPL", "-t", "1h", "-o", str(good)).returncode == 0
    lines = good.read_text().splitlines()
    # Row 4 of the file: high below low. Every other row is a valid bar that would be new.
    cols = lines[3].split(",")
    cols[0] = "2024-03-01 15:30:00+00:00"
    cols[2], cols[3] = cols[3], str(float(cols[2]) + 5)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([lines[0], *lines[1:3], ",".join(cols), *lines[4:]]) + "\n")

    res = run(home, "data", "import", str(bad), "--symbol", "AAPL", "-t", "1h")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "line 4" in res.stderr or "row 4" in res.stderr or "2024-03-01 15:30" in res.stderr, res.stderr
    assert "high" in res.stderr and "low" in res.stderr, res.stderr
    assert fingerprint(home) == before  # nothing stored changed

    shown = run(home, "data", "show", "AAPL", "-t", "1h")
    assert shown.returncode == 0 and f"{len(bars):,} bars" in shown.stdout and "SIMULATED" in shown.stdout
