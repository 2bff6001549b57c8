"""Two orchestrators, one active (the leader lease, actors/_orch_leader.py): kill -9 of the active one
mid-workflow and the standby takes over and the workflow completes, nothing run twice; the active one
paused with SIGSTOP past its lease while a worker runs, then resumed: the standby took over, and the
resumed one changes nothing (no verdict, no note) and steps down to standby. The orchestrators are
real processes (`python -m actors orchestrator`); the workers run in the test process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable

import pytest

from events import subjects
from events.messages import (
    OperationCreated,
    OperationStarted,
    OrchestratorCancelled,
    OrchestratorFailed,
    OrchestratorProgress,
    RunDummy,
)
from ktrdr.client import Client
from ktrdr.config import Settings
from tests.actors.test_workflows import training
from tests.helpers import stop_process, wait_for_event, wait_terminal

LEADER_TTL_S = 1.0


class Orchestrators:
    """Orchestrator processes on the test's server, and which of them is active (their presence)."""

    def __init__(self, settings: Settings, client: Client) -> None:
        self.settings, self.client = settings, client
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        s = self.settings
        env = {**os.environ, "KTRDR_HOME": str(s.home), "NATS_URL": str(s.nats_url), "PYTHONUNBUFFERED": "1",
               "KTRDR_LEADER_TTL_S": str(LEADER_TTL_S), "KTRDR_HEARTBEAT_S": str(s.heartbeat_s),
               "KTRDR_WORKER_TIMEOUT": str(s.worker_timeout_s), "KTRDR_ORPHAN_TIMEOUT": str(s.orphan_timeout_s)}
        log = open(s.home / f"orchestrator-{len(self.procs)}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "actors", "orchestrator", "--url", str(s.nats_url)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    async def states(self) -> dict[int, str]:
        """pid -> what its presence record says ("active, leader epoch N" / "standby (...)")."""
        out: dict[int, str] = {}
        for hb in await self.client.live_actors():
            if hb.role == "orchestrator" and not hb.stopping:
                out[int(hb.actor.split("-")[-2])] = hb.state
        return out

    async def wait_state(self, proc: subprocess.Popen[bytes], prefix: str, timeout: float = 30.0) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            state = (await self.states()).get(proc.pid, "")
            if state.startswith(prefix) and not state.endswith("(starting)"):
                return state
            await asyncio.sleep(0.05)
        raise TimeoutError(f"orchestrator {proc.pid} not {prefix!r} within {timeout} s: {await self.states()}; "
                           f"log: {self.log_tail(proc)}")

    def log_tail(self, proc: subprocess.Popen[bytes]) -> str:
        i = self.procs.index(proc)
        return (self.settings.home / f"orchestrator-{i}.log").read_text(errors="replace")[-2000:]


@pytest.fixture
async def orchestrators(settings: Settings, client: Client) -> AsyncIterator[Callable[[], Orchestrators]]:
    made: list[Orchestrators] = []

    def make(s: Settings = settings) -> Orchestrators:
        o = Orchestrators(s, client)
        made.append(o)
        return o

    yield make  # type: ignore[misc]
    for o in made:
        for p in o.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
            stop_process(p)


def epoch_of(state: str) -> int:
    return int(state.rsplit(" ", 1)[-1])


@pytest.mark.slow
async def test_kill_9_of_the_active_orchestrator_mid_workflow_the_standby_completes_it(
        orchestrators, start_actors, data_settings, client, gateway):
    orch = orchestrators(data_settings)
    first = orch.start()
    epoch = epoch_of(await orch.wait_state(first, "active"))
    second = orch.start()
    await orch.wait_state(second, "standby")
    await start_actors("job-manager", "ib", "trainer", settings=data_settings)
    gateway.latency_s = 0.3
    cmd = training()
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: len(v.children) == 2, timeout=30)
    data_child, train_child = (await client.view(cmd.op_id)).children
    await wait_for_event(client, data_child, lambda ev, v: v.status == "running", timeout=30)
    first.kill()  # SIGKILL: no hand-over, the standby waits the lease out
    assert epoch_of(await orch.wait_state(second, "active")) == epoch + 1
    view = await wait_terminal(client, cmd.op_id, timeout=240)
    assert view.status == "completed", (view.error, orch.log_tail(second))
    for child in (data_child, train_child):
        events = await client.events(child)
        assert len([e for e in events if isinstance(e, OperationCreated)]) == 1, child  # created once
        starts = [e for e in events if isinstance(e, OperationStarted)]
        assert [s.attempt for s in starts] == [1], (child, starts)  # run once: nobody took it over
        assert (await client.view(child)).status == "completed"
    train = await client.events(train_child)
    assert next(e for e in train if isinstance(e, OperationCreated)).epoch == epoch + 1  # planned by the new one


@pytest.mark.slow
async def test_an_orchestrator_paused_past_its_lease_changes_nothing_when_it_resumes(
        orchestrators, start_actors, settings, client):
    orch = orchestrators(settings)
    first = orch.start()
    epoch = epoch_of(await orch.wait_state(first, "active"))
    second = orch.start()
    await orch.wait_state(second, "standby")
    await start_actors("dummy")
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=200, interval_s=0.05)
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: v.status == "running", timeout=30)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        assert epoch_of(await orch.wait_state(second, "active")) == epoch + 1
        # Paused past the worker timeout as well: what the paused one knows of the worker is that old.
        seen = (await client.view(cmd.op_id)).items_processed
        await wait_for_event(client, cmd.op_id, lambda ev, v: v.terminal or v.items_processed >= seen + int(
            settings.worker_timeout_s / cmd.interval_s) + 10, timeout=60)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    await orch.wait_state(first, "standby")  # it found its lease gone and stepped down
    view = await wait_terminal(client, cmd.op_id, timeout=60)
    assert view.status == "completed", (view.error, view.errors, orch.log_tail(first))
    assert view.attempts == 1  # nobody took the operation from its worker
    ours = (OrchestratorFailed, OrchestratorCancelled, OrchestratorProgress)
    late = [e for e in await client.events(cmd.op_id) if isinstance(e, ours)]
    assert late == [], late  # the resumed one published nothing about it
    assert first.poll() is None and second.poll() is None


def test_the_leader_module_names_the_key_it_uses():
    """The lease key is no operation's id (the lease service and the sweep of ended operations key
    LEASES by op id), so neither can take or drop it."""
    from events import subjects

    assert not subjects.is_op_id(subjects.LEADER_KEY)


async def test_the_leader_lease_one_holder_a_whole_ttl_before_a_takeover_and_a_growing_epoch(client):
    """Two candidates on one bucket with their own clocks: the second waits a whole ttl of unchanged
    revision on its own clock; the first stops acting before that; its renewal after the takeover
    fails; a clean hand-back lets the next one in at once; the epoch only grows."""
    from actors._orch_leader import FENCE_FRACTION, Leadership, NotLeader
    from events import subjects as subj

    kv = await client.js.key_value(subj.LEASES_BUCKET)
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    a, b = Leadership(kv, "orchestrator-a", 2.0, clock=clock), Leadership(kv, "orchestrator-b", 2.0, clock=clock)
    assert await a.try_acquire() and a.epoch() == 1
    assert not await b.try_acquire()  # first sight of a's revision: the count starts
    now[0] = 1.0
    assert await a.renew() and not await b.try_acquire()  # a renewed: a new revision, a new count
    now[0] = 1.0 + 2.0 * FENCE_FRACTION + 0.01
    with pytest.raises(NotLeader):
        a.epoch()  # a has not renewed for 0.8 ttl: it may not act, although nobody took over yet
    assert not await b.try_acquire()  # b first saw this revision at 1.0: not a whole ttl yet
    now[0] = 3.01
    assert await b.try_acquire() and b.epoch() == 2
    assert not await a.renew()  # the lease moved: a knows it lost it
    with pytest.raises(NotLeader):
        a.epoch()
    await b.step_down()  # handed back: a takes it at once, with the next epoch
    assert await a.try_acquire() and a.epoch() == 3


async def test_a_renewal_stored_although_its_answer_was_lost_keeps_the_lease_and_a_real_loss_does_not(client):
    """The leader's renewal reaches the bucket but its answer is lost (the stream changed leader
    mid-request): its next renewal, on the revision before, fails compare-and-set, yet the lease is
    still its own value. It keeps leading (same epoch) without its fence moving; a lease another
    holder wrote is a loss."""
    from actors._orch_leader import FENCE_FRACTION, Leadership, NotLeader
    from events import subjects as subj
    from events.codec import encode
    from events.messages import Leader

    kv = await client.js.key_value(subj.LEASES_BUCKET)
    now = [0.0]
    a = Leadership(kv, "orchestrator-a", 2.0, clock=lambda: now[0])
    assert await a.try_acquire() and a.epoch() == 1
    await kv.put(subj.LEADER_KEY, encode(Leader(holder="orchestrator-a", epoch=1)))  # stored, answer lost
    now[0] = 2.0 * FENCE_FRACTION + 0.01
    assert await a.renew() and a.current == 1  # still a's: kept, on the stored revision
    with pytest.raises(NotLeader):
        a.epoch()  # but the fence did not move on it: the renewal it adopted is of unknown time
    assert await a.renew() and a.epoch() == 1  # the next renewal succeeds and extends it
    await kv.put(subj.LEADER_KEY, encode(Leader(holder="orchestrator-b", epoch=2)))  # another holder
    assert not await a.renew() and a.current == 0


async def test_a_cancel_sent_while_no_orchestrator_is_active_is_honoured_by_the_next_one(
        orchestrators, settings, client):
    """A queued operation (nobody in its pool) cancelled between the leader's death and the takeover:
    nobody active heard the cancel; the new leader reads it from OPS_CANCELS when it rebuilds."""
    orch = orchestrators(settings)
    first = orch.start()
    await orch.wait_state(first, "active")
    second = orch.start()
    await orch.wait_state(second, "standby")
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=5, interval_s=0.05)
    await client.submit(cmd)
    await wait_for_event(client, cmd.op_id, lambda ev, v: v.status == "queued", timeout=30)
    first.kill()
    await client.cancel(cmd.op_id, reason="changed my mind")
    assert (await orch.states()).get(second.pid, "").startswith("standby")  # nobody active heard it
    await orch.wait_state(second, "active")
    view = await wait_terminal(client, cmd.op_id, timeout=30)
    assert (view.status, view.reason_code) == ("cancelled", "user"), (view.status, view.errors)
