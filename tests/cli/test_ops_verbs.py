"""Every ops verb works on every operation in every state: queued, running, completed, failed,
cancelled, rejected, a workflow parent and its child. No verb shows a traceback; each exits with
the code of the operation's state; `ops list` shows the last progress of a cancelled operation."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import pytest

from events import subjects
from events.messages import LoadData, RunDummy, StartTraining
from tests.cli.test_bad_input import run_cli_table
from tests.cli.test_cli import cli_env
from tests.conftest import make_settings, utc
from tests.helpers import wait_for_event, wait_terminal

pytestmark = pytest.mark.slow
EXIT = {"completed": 0, "failed": 1, "cancelled": 130, "rejected": 2}


async def watch_until(settings, op_id: str, text: str) -> tuple[int, str]:
    """`ops watch` on an operation that does not end by itself: read until `text`, then Ctrl+C."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ktrdr", "ops", "watch", op_id,
                                                env=cli_env(settings), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    seen = ""
    while text not in seen:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line, f"watch ended before showing {text!r}: {seen!r}"
        seen += line
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert b"Traceback" not in err
    return proc.returncode or 0, seen + out.decode()


async def test_every_verb_on_every_state(start_actors, settings, client, data_settings, gateway, tmp_path):
    patient = make_settings(settings.home, settings.nats_url, orphan_timeout_s=600.0)
    await start_actors("orchestrator", settings=patient)
    await start_actors("dummy", "job-manager", "ib", settings=data_settings)
    ops: dict[str, str] = {}

    async def submit(name: str, cmd, until) -> None:  # type: ignore[no-untyped-def]
        ops[name] = cmd.op_id
        await client.submit(cmd)
        await wait_for_event(client, cmd.op_id, until, timeout=60)

    await submit("completed", RunDummy(op_id=subjects.new_op_id("dummy"), iterations=2, interval_s=0.01),
                 lambda ev, v: v.terminal)
    await submit("rejected", RunDummy(op_id=subjects.new_op_id("dummy"), iterations=0), lambda ev, v: v.terminal)
    await submit("failed", LoadData(op_id=subjects.new_op_id("data"), symbol="ZZZZ", mode="full",
                                    start=utc(2023, 1, 2), end=utc(2023, 2, 1)), lambda ev, v: v.terminal)
    await submit("cancelled", RunDummy(op_id=subjects.new_op_id("dummy"), iterations=50, interval_s=0.1),
                 lambda ev, v: v.percentage >= 20)
    await client.cancel(ops["cancelled"])
    await wait_terminal(client, ops["cancelled"])
    await submit("queued", RunDummy(op_id=subjects.new_op_id("dummy"), iterations=1, pool="nobody"),
                 lambda ev, v: v.status == "queued")
    await submit("running", RunDummy(op_id=subjects.new_op_id("dummy"), iterations=600, interval_s=0.5),
                 lambda ev, v: v.status == "running")
    parent = StartTraining(op_id=subjects.new_op_id("training"), strategy_yaml=(
        __import__("pathlib").Path("strategies/mlp_rsi_aapl.yaml").read_text()), symbols=["ZZZZ"],
        start=utc(2023, 1, 2), end=utc(2023, 2, 1))
    await submit("parent", parent, lambda ev, v: v.terminal)
    ops["child"] = (await client.view(parent.op_id)).children[0]

    views = {state: await client.view(op_id) for state, op_id in ops.items()}
    table: list[list[str]] = []
    for state, op_id in ops.items():
        table += [["ops", "show", op_id], ["ops", "show", op_id, "--events"], ["ops", "show", op_id, "--json"],
                  ["ops", "replay", op_id], ["ops", "replay", op_id, "--json"]]
        if views[state].terminal:
            table.append(["ops", "watch", op_id])
    table += [["ops", "list", "--json"], ["ops", "list"]]
    results = dict(zip(map(tuple, table), await run_cli_table(table, cli_env(settings)), strict=True))
    for state, op_id in ops.items():
        view = views[state]
        code = EXIT.get(view.status, 0)
        for verb in ("show", "replay", "watch"):
            for key in [k for k in results if k[1] == verb and k[2] == op_id]:
                rc, out, err = results[key]
                want = 0 if verb == "show" or not view.terminal else code
                assert rc == want and "Traceback" not in err + out, (state, key, rc, err)
                assert "connection to NATS lost" not in err, (state, key, err)  # closing is not losing it
        assert json.loads(results[("ops", "show", op_id, "--json")][1])["status"] == view.status
        lines = results[("ops", "replay", op_id, "--json")][1].splitlines()
        assert lines and all(json.loads(line)["op_id"] == op_id for line in lines), state
    for state in ("queued", "running"):  # watch does not end by itself: Ctrl+C detaches
        rc, out = await watch_until(settings, ops[state], "queued" if state == "queued" else "Dummy operation [")
        assert rc == 0 and "detached" in out, (state, out)
    shown = {v["op_id"]: v for v in json.loads(results[("ops", "list", "--json")][1])}
    assert set(ops.values()) <= set(shown)
    assert shown[ops["cancelled"]]["percentage"] >= 20  # the last progress, not 0
    assert f"  {ops['child']}" in results[("ops", "list")][1]  # the child indented under its parent
    # cancel last: finished ones are left as they are, live ones end cancelled
    cancels = [["ops", "cancel", ops[s]] for s in ("completed", "failed", "rejected", "cancelled", "parent", "child",
                                                   "queued", "running")]
    cancels.append(["ops", "cancel", subjects.new_op_id("dummy"), "--no-wait"])
    done = await run_cli_table(cancels, cli_env(settings))
    for (rc, out, err), state in zip(done[:6], ("completed", "failed", "rejected", "cancelled", "parent", "child"),
                                     strict=True):
        assert rc == 0 and "nothing to cancel" in out, (state, out, err)
    for (rc, out, err), state in zip(done[6:8], ("queued", "running"), strict=True):
        assert rc == 0 and "cancelled" in out, (state, out, err)
    rc, out, err = done[8]
    assert rc == 2 and "cancel is recorded" in err


async def test_a_reader_that_stops_early_is_not_blamed_on_nats(start_actors, settings, client):
    """`ktrdr ops replay ID --json | head -1` said "cannot reach NATS ([Errno 32] Broken pipe)": the
    broken pipe was the reader's, not the server's. The command now stops quietly (exit 141)."""
    await start_actors("orchestrator", "dummy")
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=2000, interval_s=0.0)
    await client.submit(cmd)
    assert (await wait_terminal(client, cmd.op_id, timeout=120)).status == "completed"
    read_end, write_end = os.pipe()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ktrdr", "ops", "replay", cmd.op_id, "--json",
                                                env=cli_env(settings), stdout=write_end,
                                                stderr=asyncio.subprocess.PIPE)
    os.close(write_end)
    with open(read_end, "rb") as reader:  # like `head -1`: one line, then the reader goes away
        assert json.loads(reader.readline())["op_id"] == cmd.op_id
    _, err = await asyncio.wait_for(proc.communicate(), 60)  # 2,000 events: far more than a pipe holds
    assert proc.returncode == 141 and b"NATS" not in err and b"Traceback" not in err, err
