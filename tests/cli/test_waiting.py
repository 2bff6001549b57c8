"""A command nobody can start yet: with no orchestrator alive (the actors' process died) or no worker
in the operation's pool, the CLI says so on stderr instead of sitting silent, keeps waiting, and
Ctrl+C still leaves with exit 130 (the cancel is recorded for whoever creates the operation later).
A real nats-server with its streams, and only the actors a test starts."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from events import subjects
from ktrdr.transport import last_message
from tests.cli.test_cli import cli_env
from tests.conftest import make_settings

pytestmark = pytest.mark.slow
STRATEGY = str(Path(__file__).parents[2] / "strategies" / "mlp_rsi_aapl.yaml")
SPAN = ["--start", "2024-01-02", "--end", "2024-03-01"]


async def start(settings, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "ktrdr", *args, env=cli_env(settings),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def stderr_line(proc: asyncio.subprocess.Process, want: str, timeout: float = 15) -> str:
    assert proc.stderr is not None
    async with asyncio.timeout(timeout):
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, f"the CLI ended without saying {want!r}"
            if want in line:
                return line


async def ctrl_c(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    assert proc.returncode is None, "the CLI stopped waiting by itself"
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.parametrize("args", [
    ["dummy", "--iterations", "3", "--interval", "0.01"],
    ["data", "load", "AAPL", "-t", "1h", *SPAN],
    ["train", STRATEGY, *SPAN, "--epochs", "1"],
], ids=["dummy", "data-load", "train"])
async def test_no_orchestrator_alive_is_said_and_ctrl_c_still_cancels(settings, client, args: list[str]) -> None:
    proc = await start(settings, *args)  # the `client` fixture made the streams: a stack whose actors died
    try:
        line = await stderr_line(proc, "no orchestrator is alive")
        op_id = line.split(":", 1)[0].strip()
        assert subjects.is_op_id(op_id) and "queued" in line and "Ctrl+C" in line, line
        rc, out, err = await ctrl_c(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert rc == 130, (out, err)
    assert "cancelled" in out and op_id in out, out
    assert await last_message(client.js, subjects.cancel(op_id)) is not None  # applies once it is created


async def test_no_worker_in_the_pool_is_said_and_ctrl_c_cancels(start_actors, settings) -> None:
    # Nobody serves the dummy domain; the orchestrator would fail the operation only much later.
    await start_actors("orchestrator", settings=make_settings(settings.home, settings.nats_url, orphan_timeout_s=300))
    proc = await start(settings, "dummy", "--iterations", "3", "--interval", "0.01")
    try:
        line = await stderr_line(proc, "no dummy worker in pool any is alive")
        assert "queued" in line, line
        rc, out, err = await ctrl_c(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert rc == 130, (out, err)
    assert "Operation cancelled" in out, out
