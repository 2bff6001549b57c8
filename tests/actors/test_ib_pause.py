"""An ib actor that stops answering while it holds requests (issue 22, retries): the ib actor runs as a
process of its own and is paused with SIGSTOP mid-load, so its NATS subscription stays (its queue
group keeps handing it requests) and nothing comes back. The job manager's requests to it must fail
as retryable within the keepalive watch (IB_SILENCE_S), not after the requester's 120 s idle
timeout, and the next attempt completes once the ib actor runs again. A request that pacing holds
longer than the watch's bound still succeeds: the ib actor's keepalives say it is at it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from events import subjects
from events.bounds import IB_SILENCE_S
from events.messages import LoadData, OperationFailed, OperationProgress, OperationStarted
from ktrdr.client import Client
from ktrdr.config import Settings
from ktrdr.data.bars_store import BarStore
from ktrdr.ib.sim.threaded import SimGatewayThread
from ktrdr.transport import IbRequester
from tests.actors.test_job_manager import assert_same_bars, expected
from tests.conftest import utc
from tests.helpers import stop_process, wait_for_event, wait_terminal

pytestmark = pytest.mark.slow


@dataclass
class IbProcess:
    proc: subprocess.Popen[bytes]
    actor_id: str

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


def _spawn_ib(s: Settings, gateway_port: int, time_scale: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KTRDR_HOME": str(s.home), "NATS_URL": str(s.nats_url), "PYTHONUNBUFFERED": "1",
           "IB_PORT": str(gateway_port), "IB_CLIENT_ID": "21", "KTRDR_IB_TIME_SCALE": str(time_scale),
           "KTRDR_HEARTBEAT_S": str(s.heartbeat_s)}
    with open(s.home / "ib-actor.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "actors", "ib", "--url", str(s.nats_url)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture
async def ib_process(data_settings: Settings, client: Client, gateway: SimGatewayThread,
                     time_scale: float) -> AsyncIterator[IbProcess]:
    """`python -m actors ib` against the test's server and sim gateway, once its heartbeat is out."""
    s = data_settings
    proc = _spawn_ib(s, gateway.port, time_scale)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        actor_id = ""
        while not actor_id:
            assert proc.poll() is None, (s.home / "ib-actor.log").read_text(errors="replace")[-2000:]
            assert loop.time() < deadline, "the ib actor process did not announce itself within 60 s"
            actor_id = next((hb.actor for hb in await client.live_actors()
                             if hb.role == "ib" and hb.pid == proc.pid and hb.state == "connected"), "")
            await asyncio.sleep(0.05)  # poll interval of the presence read
        yield IbProcess(proc, actor_id)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        stop_process(proc)


@pytest.fixture
async def jobs(start_actors, data_settings: Settings, client: Client, ib_process: IbProcess) -> IbProcess:
    """The orchestrator and the job manager in this process; the ib actor is the process above."""
    await start_actors("orchestrator", "job-manager", settings=data_settings)
    ib = IbRequester(client.nc)  # warm-up through the ib process (and proof it serves)
    await ib.contract("AAPL")
    return ib_process


def retrying(ev: object, _view: object) -> bool:
    return isinstance(ev, OperationProgress) and ev.progress.phase == "retrying"


def stored_a_segment(ev: object, _view: object) -> bool:
    return (isinstance(ev, OperationProgress) and ev.progress.context is not None
            and getattr(ev.progress.context, "segments_done", 0) >= 1)


@pytest.mark.parametrize("time_scale", [1.0])  # IB's own burst pace: the load runs for seconds
@pytest.mark.parametrize("gateway_wait_s", [2.0])
async def test_an_ib_actor_paused_mid_load_fails_the_attempt_as_retryable_within_seconds_and_the_next_completes(
        client, jobs, data_settings):
    start, end = utc(2023, 1, 3), utc(2023, 1, 14)  # 1m bars: one segment per trading day
    cmd = LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", timeframe="1m", mode="full",
                   start=start, end=end, retries=3, retry_max_interval_s=2.0)
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, stored_a_segment, timeout=60)
    jobs.pause()
    try:
        # Before the keepalive watch, each request held by the paused actor waited 120 s: this wait
        # (and the one below) ran out first.
        await wait_for_event(client, cmd.op_id, retrying, timeout=60)
    finally:
        jobs.resume()
    view = await wait_terminal(client, cmd.op_id, timeout=90)
    assert view.status == "completed", view.error
    assert view.result["segments_failed"] == 0
    events = await client.events(cmd.op_id)
    waits = [e.progress for e in events if isinstance(e, OperationProgress) and e.progress.phase == "retrying"]
    starts = [e.attempt for e in events if isinstance(e, OperationStarted)]
    assert starts == list(range(1, len(waits) + 2)), starts  # each wait one more attempt, the last completed
    first = waits[0]
    assert first.message.startswith("attempt 2 of 4 in 1 s: "), first.message
    # The attempt ended on the silent ib actor, said so, and was never a 120 s idle timeout.
    assert "stopped answering" in first.retry_reason and "NATS answers" in first.retry_reason, first.retry_reason
    silent = re.search(r"nothing (?:from it )?for (\d+) s", first.retry_reason)
    assert silent and int(silent.group(1)) <= IB_SILENCE_S + 1, first.retry_reason
    assert not [w for w in waits if "within 120 s" in w.retry_reason], waits
    assert not [e for e in events if isinstance(e, OperationFailed)]
    assert_same_bars(await BarStore(client.js).read("AAPL", "1m"), expected("AAPL", "1m", start, end))


@pytest.mark.parametrize("time_scale", [0.5])  # IB's identical-request window: 7.5 s, > IB_SILENCE_S
async def test_a_request_held_by_pacing_longer_than_the_silence_bound_succeeds(client, ib_process):
    ib = IbRequester(client.nc)
    waits: list[float] = []
    start, end = utc(2023, 1, 3), utc(2023, 1, 4)
    df, _ = await ib.bars("AAPL", "1h", start, end)
    df2, _ = await ib.bars("AAPL", "1h", start, end, on_wait=lambda s, _why: waits.append(s))  # identical
    assert waits and max(waits) > IB_SILENCE_S, waits  # held longer than a silence that fails a request
    assert len(df2) == len(df) > 0
