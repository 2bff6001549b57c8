"""Bad input on the command line never shows a traceback: every case is one line on stderr naming what
was wrong, and exit code 2. No server runs here (NATS_URL points at a closed port), so a case that
slipped past validation would show up as a connection error (exit 1) instead."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from ktrdr.embedded import free_port

pytestmark = pytest.mark.slow
STRATEGY = str(Path(__file__).parents[2] / "strategies" / "mlp_rsi_aapl.yaml")
OP = "dummy-20261128T174900123456-3f9a1c"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("bad-input")
    out = {"dir": str(d)}
    for name, data in {
        "binary.yaml": b"\x00\x01\x02\xff" * 64, "empty.yaml": b"", "blank.yaml": b"   \n\n",
        "latin1.yaml": "name: caf\xe9\n".encode("latin-1"), "bad.yaml": b"name: [unclosed\n",
        "alias.yaml": b"a: &a [1,2]\nb: *a\n", "notmapping.yaml": b"- 1\n- 2\n",
        "big.yaml": b"# " + b"x" * (300 * 1024) + b"\n",
        "empty.csv": b"", "header.csv": b"timestamp,open,high,low,close,volume\n",
        "nodate.csv": b"open,high,low,close,volume\n1,2,0.5,1.5,10\n",
        "baddate.csv": b"timestamp,open,high,low,close,volume\nnot-a-date,1,2,0.5,1.5,10\n",
        "binary.csv": b"\x00\x00\x00",
    }.items():
        (d / name).write_bytes(data)
        out[name] = str(d / name)
    (d / "folder.yaml").mkdir()
    out["folder.yaml"] = str(d / "folder.yaml")
    return out


def cases(f: dict[str, str]) -> list[list[str]]:
    long_id = "d" * 2000
    return [
        # strategy files
        ["train", f"{f['dir']}/missing.yaml"], ["train", ""], ["train", f["folder.yaml"]],
        ["train", f["binary.yaml"]], ["train", f["empty.yaml"]], ["train", f["blank.yaml"]],
        ["train", f["latin1.yaml"]], ["train", f["bad.yaml"]], ["train", f["alias.yaml"]],
        ["train", f["notmapping.yaml"]], ["train", f["big.yaml"]],
        ["strategies", "validate", f["bad.yaml"]], ["strategies", "validate", f["folder.yaml"]],
        ["strategies", "validate", f"{f['dir']}/missing.yaml"],
        # train options
        ["train", STRATEGY, "--symbols", "../../../AAPL"], ["train", STRATEGY, "--symbols", "AAPL*"],
        ["train", STRATEGY, "--timeframes", "7h"], ["train", STRATEGY, "--epochs", "0"],
        ["train", STRATEGY, "--epochs", "1000000000"], ["train", STRATEGY, "--start", "2024-02-30"],
        ["train", STRATEGY, "--start", "2024-05-01", "--end", "2024-01-01"], ["train", STRATEGY, "--on", "a.b"],
        ["train", STRATEGY, "--timeout", "-5"], ["train", STRATEGY, "--data", "maybe"],
        # retry policies: beyond the cap, negative, a maximum interval under the first wait
        ["data", "load", "AAPL", "--retries", "21"], ["dummy", "--retries", "-1"],
        ["train", STRATEGY, "--retry-max-interval", "0.5"], ["sweep", STRATEGY, "--retries", "1000"],
        ["backtest", "mlp_rsi_aapl", "--retry-max-interval", "99999"],
        # ops retry: an id that is not one
        ["ops", "retry", "not-an-id"], ["ops", "retry", long_id],
        # sweep: a PATH the strategy lacks, VALUES no list, a grid over the cap, K < 1, a value out of bounds
        ["sweep", STRATEGY, "--param", "model.training.learnin_rate=[0.1]"],
        ["sweep", STRATEGY, "--param", "model.training.learning_rate=0.1"],
        ["sweep", STRATEGY, "--param", "model.training.learning_rate=[0.1"],
        ["sweep", STRATEGY, "--param", "model.training.learning_rate"],
        ["sweep", STRATEGY, "--param", "../x=[1]"], ["sweep", STRATEGY, "--param", "indicators.9.period=[3]"],
        ["sweep", STRATEGY, "--param", f"model.training.batch_size={list(range(1, 20))}",
         "--param", f"model.training.epochs={list(range(1, 20))}"],
        ["sweep", STRATEGY, "--param", "model.training.learning_rate=[0.1]", "--max-parallel", "0"],
        ["sweep", STRATEGY, "--param", "model.training.learning_rate=[0.1, -1]"],
        ["sweep", STRATEGY, "--param", "training_data.symbols.list=[[MSFT]]"],
        ["sweep", STRATEGY, "--param", "model.training.learning_rate=[0.1]", "--rank-by", "sharpe"],
        ["sweep", STRATEGY, "--param", "model.training.learning_rate=[0.1]", "--rank-by", "profit"],
        ["sweep", STRATEGY],
        # data load / show / export / import
        ["data", "load", "../../etc"], ["data", "load", "AAPL>"], ["data", "load", "x" * 100_000],
        ["data", "load", "AAPL", "-t", "2h"], ["data", "load", "AAPL", "--mode", "all"],
        ["data", "load", "AAPL", "--start", "yesterday"], ["data", "load", "AAPL", "--start", "1969-01-01"],
        ["data", "load", "AAPL", "--start", "2099-01-01"], ["data", "load", "AAPL", "--on", "*"],
        ["data", "show", "AAPL/../x"], ["data", "range", "AA PL!"],
        ["data", "export", "AAPL", "-o", f"{f['dir']}/no/such/dir/x.csv"], ["data", "export", "AAPL", "-o", f["dir"]],
        ["data", "import", f"{f['dir']}/missing.csv", "-s", "AAPL"], ["data", "import", f["empty.csv"], "-s", "AAPL"],
        ["data", "import", f["binary.csv"], "-s", "AAPL"], ["data", "import", f["dir"], "-s", "AAPL"],
        ["data", "import", f["header.csv"], "-s", "AAPL"], ["data", "import", f["nodate.csv"], "-s", "AAPL"],
        ["data", "import", f["baddate.csv"], "-s", "AAPL"], ["data", "import", f["header.csv"], "-s", "../x"],
        # operation ids
        ["ops", "show", "ops.>"], ["ops", "show", "*"], ["ops", "watch", f"{OP}.x"], ["ops", "replay", ""],
        ["ops", "cancel", long_id], ["ops", "show", "nope-20261128T174900123456-3f9a1c"],
        ["ops", "replay", OP, "--speed", "-1"], ["ops", "list", "--limit", "-3"],
        ["ops", "list", "--text", "aapl*"], ["ops", "list", "--text", "x" * 65], ["ops", "list", "--text", " "],
        # numbers and options
        ["dummy", "--iterations", "0"], ["dummy", "--iterations", "abc"], ["dummy", "--interval", "-1"],
        ["dummy", "--iterations", "1000000", "--interval", "0"], ["dummy", "--timeout", "0"],
        ["sim-gateway", "--port", "70000"], ["ops", "nope"], ["--no-such-option"],
    ]


# Every case runs through the real `ktrdr` entry point (argument parsing, validation, error printing),
# all in one interpreter so the table costs one start-up, not sixty.
DRIVER = """
import contextlib, io, json, sys, traceback
from ktrdr.cli import main
results = []
for args in json.load(sys.stdin):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["ktrdr", *args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
            rc = 0
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            rc = -1
    results.append([rc, out.getvalue(), err.getvalue()])
sys.stdout.write(json.dumps(results))
"""


async def run_cli_table(table: list[list[str]], env: dict[str, str]) -> list[tuple[int, str, str]]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", DRIVER, env=env, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(json.dumps(table).encode()), 300)
    assert proc.returncode == 0, err.decode()[-3000:]
    return [tuple(r) for r in json.loads(out)]  # type: ignore[misc]


async def test_every_bad_input_is_one_line_and_exit_2(files, tmp_path):
    env = {**os.environ, "NATS_URL": f"nats://127.0.0.1:{free_port()}", "KTRDR_HOME": str(tmp_path / "home")}
    table = cases(files)
    assert len(table) >= 40
    results = await run_cli_table(table, env)
    bad = []
    for args, (rc, out, err) in zip(table, results, strict=True):
        lines = [ln for ln in err.splitlines() if ln.strip()]
        shown = [a if len(a) <= 80 else a[:40] + "..." + a[-30:] for a in args]
        if rc != 2 or "Traceback" in err + out or len(lines) != 1 or not lines[0].startswith(("error:", "invalid:")):
            bad.append((shown, rc, err[-300:]))
        elif len(lines[0]) > 400:
            bad.append((shown, "line too long", len(lines[0])))
    assert bad == []
