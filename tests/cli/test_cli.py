"""The `ktrdr` CLI as a user runs it: a subprocess against a real nats-server, actors in-process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import pytest

from events import subjects
from events.messages import RunDummy
from tests.helpers import wait_terminal


async def ktrdr(settings, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ktrdr", *args, env=cli_env(settings),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


def cli_env(settings) -> dict[str, str]:
    return {**os.environ, "NATS_URL": settings.nats_url, "KTRDR_HOME": str(settings.home), "PYTHONUNBUFFERED": "1"}


async def test_dummy_command_completes_with_exit_0(start_actors, settings):
    await start_actors("orchestrator", "dummy")
    rc, out, err = await ktrdr(settings, "dummy", "--iterations", "3", "--interval", "0.01")
    assert rc == 0, err
    assert "Dummy operation completed: 3 iterations" in out


async def test_dummy_ctrl_c_cancels_and_exits_130(start_actors, settings):
    await start_actors("orchestrator", "dummy")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ktrdr", "dummy", "--iterations", "100", "--interval", "0.3", env=cli_env(settings),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    while True:  # wait until it renders progress: the operation is running
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line, "CLI ended before showing progress"
        if "Dummy operation [" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 130, (out, err)
    assert "Operation cancelled at iteration" in out.decode()


async def test_rejected_command_exits_2_with_reason(start_actors, settings):
    await start_actors("orchestrator", "dummy")
    rc, _out, err = await ktrdr(settings, "dummy", "--iterations", "0")
    assert rc == 2
    assert "iterations" in err and "between 1 and" in err


async def test_no_wait_then_ops_commands(start_actors, settings, client):
    await start_actors("orchestrator", "dummy")
    rc, out, _ = await ktrdr(settings, "dummy", "--iterations", "2", "--interval", "0.01", "--no-wait")
    op_id = out.strip()
    assert rc == 0 and subjects.is_op_id(op_id)
    await wait_terminal(client, op_id)
    rc, out, _ = await ktrdr(settings, "ops", "list", "--json")
    listed = {v["op_id"]: v for v in json.loads(out)}
    assert listed[op_id]["status"] == "completed"
    rc, out, _ = await ktrdr(settings, "ops", "show", op_id, "--json")
    assert json.loads(out)["result"]["iterations_completed"] == 2
    rc, out, _ = await ktrdr(settings, "ops", "cancel", op_id)
    assert rc == 0 and "already completed; nothing to cancel" in out
    rc, out, _ = await ktrdr(settings, "ops", "replay", op_id)
    assert rc == 0 and "Dummy operation completed: 2 iterations" in out
    rc, out, _ = await ktrdr(settings, "ops", "watch", op_id)
    assert rc == 0 and "Dummy operation completed" in out


async def test_ops_cancel_of_running_operation_waits_for_cancelled(start_actors, settings, client):
    await start_actors("orchestrator", "dummy")
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=100, interval_s=0.2)
    await client.submit(cmd)
    from tests.helpers import wait_for_event

    await wait_for_event(client, cmd.op_id, lambda ev, v: v.status == "running")
    rc, out, _ = await ktrdr(settings, "ops", "cancel", cmd.op_id)
    assert rc == 0 and f"{cmd.op_id} cancelled at iteration" in out


async def test_bad_op_id_is_a_usage_error(settings):
    rc, _, err = await ktrdr(settings, "ops", "show", "not-an-id")
    assert rc == 2 and "not an operation id" in err


def test_events_schema_lists_every_message():
    import subprocess

    out = subprocess.run([sys.executable, "-m", "ktrdr", "events", "schema"], capture_output=True, check=True,
                         text=True).stdout
    defs = json.loads(out)["$defs"]
    for name in ("RunDummy", "LoadData", "StartTraining", "OperationCreated", "OperationRejected",
                 "OperationStarted", "OperationProgress", "OperationCompleted", "OperationFailed",
                 "CancelRequested", "OperationCancelled", "CancelOperation", "ProgressState"):
        assert name in defs


@pytest.mark.parametrize("argv", [["--help"], ["ops", "list"]])
async def test_fast_commands_do_not_import_torch_or_pandas(settings, argv):
    code = ("import sys\nfrom ktrdr.cli import main\nsys.argv=['ktrdr', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'pandas') if m in sys.modules))")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, *argv, env=cli_env(settings),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert "HEAVY []" in out.decode(), (out, err)


def test_commands_are_registered_explicitly_without_an_import_circle():
    """The package assembles the app (`build_app`); a commands module never imports the package's
    names, and importing one registers nothing (its `register` does)."""
    import ast
    from pathlib import Path

    import ktrdr.cli

    folder = Path(ktrdr.cli.__file__).parent
    circular = []
    for path in sorted(folder.glob("*.py")):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "ktrdr.cli":
                circular.append(f"{path.name}: from ktrdr.cli import {', '.join(a.name for a in node.names)}")
    assert circular == []
    code = ("import ktrdr.cli.ops_commands as m, typer\n"
            "g = typer.Typer()\nassert not g.registered_commands\nm.register(g)\n"
            "print(sorted(c.name for c in g.registered_commands))")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == str(sorted(["list", "show", "watch", "replay", "cancel", "retry", "tail", "reindex"]))
