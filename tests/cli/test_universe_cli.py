"""`ktrdr data load --symbols/--symbols-file`: bad symbols files and options are refused before
anything is sent, one line naming the bad line, exit 2 (through the real entry point)."""

from __future__ import annotations

import os

from events.bounds import MAX_SYMBOLS_FILE_BYTES, MAX_UNIVERSE_PARALLEL
from ktrdr.embedded import free_port
from tests.cli.test_bad_input import run_cli_table


async def test_bad_symbols_files_and_universe_options_exit_2_naming_the_bad_line(tmp_path):
    files = {
        "badline.txt": b"# my universe\nAAPL\n\nMSFT  # comment\n../etc\nSPY\n",
        "empty.txt": b"# nothing\n\n", "binary.txt": b"\xff\xfe\x00AAPL\n",
        "big.txt": b"AAPL\n" * (MAX_SYMBOLS_FILE_BYTES // 5 + 1),
        "star.txt": b"AAPL\nMS*FT\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    f = {n: str(tmp_path / n) for n in files}
    table = [
        ["data", "load", "--symbols-file", f["badline.txt"]],
        ["data", "load", "--symbols-file", f["star.txt"]],
        ["data", "load", "--symbols-file", f["empty.txt"]],
        ["data", "load", "--symbols-file", f["binary.txt"]],
        ["data", "load", "--symbols-file", f["big.txt"]],
        ["data", "load", "--symbols-file", str(tmp_path / "missing.txt")],
        ["data", "load", "--symbols-file", str(tmp_path)],
        ["data", "load", "--symbols", "AAPL,../x"],
        ["data", "load", "--symbols", ","],
        ["data", "load", "AAPL", "--symbols", "MSFT,SPY"],
        ["data", "load"],
        ["data", "load", "--symbols", "AAPL,MSFT", "--max-parallel", "0"],
        ["data", "load", "--symbols", "AAPL,MSFT", "--max-parallel", str(MAX_UNIVERSE_PARALLEL + 1)],
    ]
    env = {**os.environ, "NATS_URL": f"nats://127.0.0.1:{free_port()}", "KTRDR_HOME": str(tmp_path / "home")}
    results = await run_cli_table(table, env)
    for args, (rc, _out, err) in zip(table, results, strict=True):
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, (args, err)
    errs = [err for _, _, err in results]
    assert "line 5" in errs[0] and "../etc" in errs[0]  # the bad line, by number and text
    assert "line 2" in errs[1] and "MS*FT" in errs[1]
    assert "no symbol" in errs[2] and "UTF-8" in errs[3] and str(MAX_SYMBOLS_FILE_BYTES) in errs[4]
