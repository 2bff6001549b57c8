"""Issue 18, F4 and F2, as an attacker holding an ordinary key would try them, on a running stack with
auth on (every role's real NKEY; the orchestrator and the dummy in this process, each with its own
role's key; the attacker a second connection with the same role's key): a worker role's key can
neither finish, move nor stall an operation another process of its role holds, nor grant itself one.

- F4: another dummy process completes a running operation with a forged result, copying the holder's
  actor id: not counted, noted; the genuine result wins. A forged progress with seq 10^15 does not
  freeze the view. A job-manager key cannot complete a data operation another job-manager holds
  (the holder here speaks the protocol by hand: a lease granted to its key, its verdict chained).
- F2: a worker key cannot write any LEASES key, nor another domain's lease requests; it cannot
  publish `started` or `created`.
- The orchestrator's own verdict (cancelled before start) is believed; a worker's imitation is not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from events import roles, subjects
from events.codec import encode
from events.messages import LoadData, OperationCancelled, OperationCompleted, OperationProgress, ProgressState, RunDummy
from ktrdr.client import Client
from tests.helpers import run_ktrdr, wait_for_event, wait_terminal
from tests.security.conftest import Stack, module_stack
from tests.security.test_forgery import running_dummy

# One stack for the module (a server with every role's user, the orchestrator and one dummy, each
# with its role's key): every test makes its own operations and its own attacker connections.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180), pytest.mark.asyncio(loop_scope="module")]
QUEUED_POOL = "gpu"  # no worker here serves it: an operation there stays queued


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with module_stack(tmp_path_factory, "holder", roles.ORCHESTRATOR) as s:
        yield s


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cli(stack: Stack) -> AsyncIterator[Client]:
    async with Client(stack.settings) as c:
        yield c


async def dummy_running(stack: Stack, cli: Client, iterations: int) -> RunDummy:
    if not any(a.role == roles.DUMMY for a in stack.actors):
        return await running_dummy(stack, cli, iterations)  # starts the module's one dummy
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=iterations, interval_s=0.05)
    await cli.submit(cmd)
    await wait_for_event(cli, cmd.op_id, lambda ev, v: v.current_step >= 3, timeout=60)
    return cmd


async def test_f4_another_dummy_process_cannot_complete_a_running_operation(stack, cli):
    cmd = await dummy_running(stack, cli, iterations=60)
    holder = (await cli.view(cmd.op_id)).worker
    attacker, _errors = await stack.key(roles.DUMMY)
    forged = OperationCompleted(op_id=cmd.op_id, actor=holder or "", seq=10**9, result={"forged": True})
    await attacker.jetstream().publish(subjects.event(forged), encode(forged))  # its role may: stored
    view = await cli.view(cmd.op_id)
    assert view.status == "running" and view.result is None
    assert view.unproven >= 1 and any("unproven OperationCompleted" in e for e in view.errors)
    shown = await asyncio.to_thread(run_ktrdr, stack.env(), "ops", "show", cmd.op_id, timeout=60)
    assert shown.returncode == 0 and "unproven" in shown.stdout, shown.stderr
    assert "running" in shown.stdout and "forged" not in shown.stdout
    final = await wait_terminal(cli, cmd.op_id, timeout=60)
    assert final.status == "completed" and final.result is not None
    assert final.result.get("iterations_completed") == 60 and "forged" not in final.result


async def test_f4_a_forged_progress_does_not_freeze_the_view(stack, cli):
    cmd = await dummy_running(stack, cli, iterations=40)
    view = await cli.view(cmd.op_id)
    attacker, _errors = await stack.key(roles.DUMMY)
    forged = OperationProgress(op_id=cmd.op_id, actor=view.worker or "", seq=10**15, attempt=view.attempts,
                               progress=ProgressState(percentage=99.0, message="forged", current_step=39))
    await attacker.jetstream().publish(subjects.event(forged), encode(forged))
    step = view.current_step
    later = await wait_for_event(cli, cmd.op_id, lambda ev, v: v.current_step > step + 3 and v.message != "forged",
                                 timeout=60)
    assert later.percentage < 99.0
    final = await wait_terminal(cli, cmd.op_id, timeout=60)
    assert final.status == "completed" and final.message != "forged"


async def test_f4_a_job_manager_key_cannot_complete_a_data_operation_another_holds(stack, cli):
    from actors._leases import Held, Leases
    from events import proof

    cmd = LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL")
    await cli.submit(cmd)  # no job-manager runs: it stays queued until the holder below takes it
    await wait_for_event(cli, cmd.op_id, lambda ev, v: v.status == "queued", timeout=30)
    holder_nc, _ = await stack.key(roles.JOB_MANAGER)
    key = proof.new_key()
    leases = Leases(holder_nc, "data", "job-manager-holder-1", key, 20)
    held = await leases.acquire(cmd.op_id)
    assert isinstance(held, Held)
    await wait_for_event(cli, cmd.op_id, lambda ev, v: v.worker == "job-manager-holder-1", timeout=30)
    attacker, _errors = await stack.key(roles.JOB_MANAGER)
    forged = OperationCompleted(op_id=cmd.op_id, actor="job-manager-holder-1", result={"bars": 25})
    own = proof.new_key()  # signed, but by a key no grant names
    payload, subject = encode(forged), subjects.event(forged)
    header = proof.Signer(own, 0.001).proof(cmd.op_id, subject, payload, 0.0, force=True)[0]
    await attacker.jetstream().publish(subject, payload, headers={proof.HEADER: header})
    view = await cli.view(cmd.op_id)
    assert view.status == "running" and view.result is None and view.unproven == 1
    genuine = OperationCompleted(op_id=cmd.op_id, actor="job-manager-holder-1", result={"bars": 83})
    payload = encode(genuine)
    header = proof.Signer(key, 0.001).proof(cmd.op_id, subject, payload, 0.0, force=True)[0]
    await holder_nc.jetstream().publish(subject, payload, headers={proof.HEADER: header})
    final = await wait_terminal(cli, cmd.op_id, timeout=30)
    assert final.status == "completed" and final.result == {"bars": 83}


async def test_f2_a_worker_key_writes_no_lease_and_touches_no_other_domain(stack, cli):
    cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=3, interval_s=0.01)
    for subject in (f"$KV.LEASES.{cmd.op_id}", f"$KV.LEASES.{subjects.new_op_id('training')}",
                    "$KV.LEASES.series.AAPL.1h", "$KV.SERIES.series.AAPL.1h", "lease.training.claim",
                    f"ops.training.{subjects.new_op_id('training')}.progress"):
        nc, errors = await stack.key(roles.DUMMY)
        await nc.publish(subject, b"x")
        text = await errors.wait_for("Permissions Violation")
        assert subject.lower() in text.lower()


async def test_f4_a_worker_key_cannot_publish_started_or_created(stack, cli):
    op = subjects.new_op_id("dummy")
    for name in ("started", "created", "rejected", "cancel_requested", "orch_cancelled"):
        nc, errors = await stack.key(roles.DUMMY)
        await nc.publish(subjects.ops(op, name), b"{}")
        text = await errors.wait_for("Permissions Violation")
        assert f"ops.dummy.{op}.{name}".lower() in text.lower()


async def test_the_orchestrators_verdict_counts_and_a_workers_imitation_does_not(stack, cli):
    real = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=3, interval_s=0.01, pool=QUEUED_POOL)
    imitated = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=3, interval_s=0.01, pool=QUEUED_POOL)
    for cmd in (real, imitated):  # no worker serves the pool: both stay queued
        await cli.submit(cmd)
        await wait_for_event(cli, cmd.op_id, lambda ev, v: v.status == "queued", timeout=30)
    await cli.cancel(real.op_id, reason="not wanted")
    final = await wait_terminal(cli, real.op_id, timeout=30)
    assert final.status == "cancelled" and final.where and "before" in final.where
    attacker, _errors = await stack.key(roles.DUMMY)
    forged = OperationCancelled(op_id=imitated.op_id, actor="orchestrator-evil", where="queued, before any worker "
                                "started it", reason="forged")
    await attacker.jetstream().publish(subjects.event(forged), encode(forged))
    view = await cli.view(imitated.op_id)
    assert view.status == "queued" and view.unproven == 1
