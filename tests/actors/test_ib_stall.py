"""A gateway that stops answering without closing its socket (paused, hung) against real processes:
the simulated gateway runs as its own process and is paused with SIGSTOP, so the ib actor's
connection stays open and nothing comes back. Each attempt of a load must fail within the stall
watch (IbClient.stall_s) plus the load's gateway wait, not after IB's request timeout (120 s, twice
per attempt: a 4-minute attempt was seen on the embedded default, issue 22)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from events import subjects
from events.messages import LoadData, OperationFailed, OperationProgress, OperationStarted
from tests.conftest import utc
from tests.helpers import stop_process, wait_terminal

pytestmark = pytest.mark.slow


@dataclass
class GatewayProcess:
    port: int
    proc: subprocess.Popen[str]

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture
def gateway(time_scale: float) -> Iterator[GatewayProcess]:
    """The sim gateway as a process of its own (the conftest's runs on a thread of ours), so it can
    be paused while its socket stays open."""
    proc = subprocess.Popen([sys.executable, "-m", "ktrdr.ib.sim", "--port", "0", "--time-scale", str(time_scale)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"listening on [\d.]+:(\d+)", line)
        assert m, line
        yield GatewayProcess(int(m.group(1)), proc)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        stop_process(proc)


@pytest.mark.parametrize("gateway_wait_s", [2.0])
async def test_a_paused_gateway_fails_each_attempt_within_the_stall_watch_and_the_gateway_wait(
        client, data_stack, gateway):
    gateway.pause()
    cmd = LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", timeframe="1h", mode="full",
                   start=utc(2023, 1, 2), end=utc(2023, 3, 1), retries=2, retry_max_interval_s=1.0)
    await client.submit(cmd)
    # Three attempts: before the stall watch each one waited 2 x 120 s for IB's request timeout.
    view = await wait_terminal(client, cmd.op_id, timeout=120)
    assert view.status == "failed" and view.error_code == "disconnected", view.error
    events = await client.events(cmd.op_id)
    assert [e.attempt for e in events if isinstance(e, OperationStarted)] == [1, 2, 3]
    waits = [e.progress.retry_reason for e in events
             if isinstance(e, OperationProgress) and e.progress.phase == "retrying"]
    failed = [e for e in events if isinstance(e, OperationFailed)]
    assert len(waits) == 2 and len(failed) == 1 and failed[0].retryable is True
    reasons = [*waits, failed[0].error]
    # No attempt ended on a request timeout; the first one saw the stall itself.
    assert not [r for r in reasons if "within 120 s" in r or "did not answer" in r], reasons
    assert "stopped answering" in reasons[0], reasons
    # Every attempt that rode out the outage gave up after the load's wait (2 s), as it says.
    for r in reasons:
        m = re.search(r"unreachable for (\d+) s", r)
        if m:
            assert int(m.group(1)) <= 2 + 1, r
