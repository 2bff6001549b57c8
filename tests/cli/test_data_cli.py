"""`ktrdr data import/export/show/range` and `models list/show/pull` as a user runs them (subprocesses
with their own KTRDR_HOME, against a NATS server): everything is read from and written to the object
buckets. A bad CSV is rejected with its row and reason and leaves the stored series as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from ktrdr.data.bars_store import BarStore
from ktrdr.data.calendar import lookup
from ktrdr.ib.sim.data import generate_bars
from ktrdr.training.model_store import ModelStore
from ktrdr.training.registry import FILES
from ktrdr.transport.objects import BARS, stat


def run(home: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    env.update(KTRDR_HOME=str(home), NATS_URL=url)
    return subprocess.run([sys.executable, "-m", "ktrdr", *args], env=env, capture_output=True, text=True,
                          timeout=60)


async def test_bad_csv_import_is_rejected_with_row_and_reason_and_the_stored_series_is_untouched(
        tmp_path: Path, client, nats_server):
    home, url = tmp_path / "home", nats_server.url
    bars = generate_bars(lookup("AAPL"), "1h", datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 2, 1, tzinfo=UTC),
                         seed=0)
    await BarStore(client.js).merge("AAPL", "1h", bars, "sim")
    before = await stat(client.js, BARS, "AAPL/1h")
    assert before is not None

    good = tmp_path / "good.csv"
    assert run(home, url, "data", "export", "AAPL", "-t", "1h", "-o", str(good)).returncode == 0
    lines = good.read_text().splitlines()
    # Row 4 of the file: high below low. Every other row is a valid bar that would be new.
    cols = lines[3].split(",")
    cols[0] = "2024-03-01 15:30:00+00:00"
    cols[2], cols[3] = cols[3], str(float(cols[2]) + 5)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([lines[0], *lines[1:3], ",".join(cols), *lines[4:]]) + "\n")

    res = run(home, url, "data", "import", str(bad), "--symbol", "AAPL", "-t", "1h")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "line 4" in res.stderr or "row 4" in res.stderr or "2024-03-01 15:30" in res.stderr, res.stderr
    assert "high" in res.stderr and "low" in res.stderr, res.stderr
    assert await stat(client.js, BARS, "AAPL/1h") == before  # nothing stored changed

    shown = run(home, url, "data", "show", "AAPL", "-t", "1h")
    assert shown.returncode == 0 and f"{len(bars):,} bars" in shown.stdout and "SIMULATED" in shown.stdout
    rng = json.loads(run(home, url, "data", "range", "AAPL", "-t", "1h", "--json").stdout)
    assert rng["rows"] == len(bars) and rng["digest"] == before.digest
    # Deleting this machine's home (its cache) loses nothing.
    import shutil

    shutil.rmtree(home)
    assert run(home, url, "data", "show", "AAPL", "-t", "1h").returncode == 0


async def test_import_merges_into_bars_and_export_round_trips(tmp_path: Path, client, nats_server):
    home, url = tmp_path / "home", nats_server.url
    bars = generate_bars(lookup("MSFT"), "1d", datetime(2023, 1, 2, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC),
                         seed=0)
    await BarStore(client.js).merge("MSFT", "1d", bars.iloc[:100], "sim")
    csv = tmp_path / "more.csv"
    from ktrdr.data.store import write_csv

    write_csv(bars.iloc[50:], csv)
    res = run(home, url, "data", "import", str(csv), "-s", "MSFT", "-t", "1d", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["bars_added"] == len(bars) - 100
    meta = await BarStore(client.js).metadata("MSFT", "1d")
    assert meta is not None and meta.rows == len(bars) and meta.source == "mixed" and meta.simulated
    out = tmp_path / "out.csv"
    assert run(home, url, "data", "export", "MSFT", "-t", "1d", "-o", str(out)).returncode == 0
    assert out.read_text() == (write_csv(bars, tmp_path / "want.csv") and (tmp_path / "want.csv").read_text())
    missing = run(home, url, "data", "show", "NVDA", "-t", "1d")
    assert missing.returncode == 1 and "no 1d data stored for NVDA" in missing.stderr


async def test_models_list_show_and_pull_read_models_from_nats(tmp_path: Path, client, nats_server):
    home, url = tmp_path / "home", nats_server.url
    files = {f: b"{}" for f in FILES}
    files["model.pt"] = b"weights"
    files["metadata.json"] = json.dumps({"op_id": "training-x", "device": "cpu", "created": "2026-01-01",
                                         "symbols": ["AAPL"], "timeframes": ["1h"]}).encode()
    history = [{"epoch": 1, "train_loss": 1.1, "val_loss": 1.2, "train_accuracy": 0.3, "val_accuracy": 0.31,
                "learning_rate": 0.001, "epoch_time_s": 0.5}]
    await ModelStore(client.js).save("mlp_rsi", ["AAPL"], ["1h"], files,
                                     result={"training_metrics": {"history": history}, "gpu_used": False})
    listed = run(home, url, "models", "list")
    assert listed.returncode == 0 and "mlp_rsi/AAPL_1h_v1 (latest)" in listed.stdout, listed.stderr
    shown = run(home, url, "models", "show", "mlp_rsi")
    assert shown.returncode == 0 and "learning rate" in shown.stdout and "1.2000" in shown.stdout, shown.stderr
    dest = tmp_path / "pulled"
    dest.mkdir()
    pulled = run(home, url, "models", "pull", "mlp_rsi/AAPL_1h", "-o", str(dest))
    assert pulled.returncode == 0, pulled.stderr
    assert sorted(p.name for p in dest.iterdir()) == sorted([*FILES, "result.json"])
    assert (dest / "model.pt").read_bytes() == b"weights"
    res = run(home, url, "models", "pull", "../../etc", "-o", str(dest))  # more names: tests/transport
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    # A folder that is not there yet is made, parents too (as `git clone DIR` does) ...
    fresh = tmp_path / "new" / "deeper"
    res = run(home, url, "models", "pull", "mlp_rsi", "-o", str(fresh))
    assert res.returncode == 0, res.stderr
    assert (fresh / "model.pt").read_bytes() == b"weights"
    # ... but not for a model that does not exist, and a path that is a file is refused: one line, exit 2.
    res = run(home, url, "models", "pull", "no_such_strategy", "-o", str(tmp_path / "nowhere"))
    assert res.returncode == 2 and "Traceback" not in res.stderr and not (tmp_path / "nowhere").exists()
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    res = run(home, url, "models", "pull", "mlp_rsi", "-o", str(a_file))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"error: -o {a_file}: exists and is not a folder"]
    assert a_file.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "home", "nats-store", "nats.log", "new", "pulled"]
