"""Issue 18's stream findings, kept as probes against a real server with auth on, the actors in this
process with their own roles' keys, and an attacker holding one ordinary key:

- F6: dedupe ids nobody else can guess. A CLI key publishes junk on an operation's cancel subject with
  `Nats-Msg-Id: <op>.created` before the orchestrator creates it, and a dummy key does the same on its
  own domain's subject: the operation is created all the same and runs to its end.
- F9: a flood of cancels bigger than the cancel stream's bytes leaves every OPS event of the other
  operations in place (OPS_CANCELS holds cancels; small limits, set as a user would, through KTRDR_ vars).
- F8: the observer key cannot make a durable consumer on OPS; once it made as many ephemeral ones as
  the stream takes, the actors still start, an operation still runs and `ktrdr ops list` still reads.
- The migration of a store made before OPS_CANCELS (OPS on `ops.>`): nothing stored is lost.
- A flood of malformed cancels writes a bounded number of ActorErrors, however many operations it names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import APIError

from actors import _actor
from events import roles, subjects
from events.codec import decode_event_on, encode
from events.messages import ActorError, CancelOperation, OperationCreated, RunDummy, StartTraining
from ktrdr import auth
from ktrdr.client import Client
from ktrdr.config import Settings
from ktrdr.transport import read_events, read_operation
from tests.conftest import make_settings
from tests.helpers import eventually, run_ktrdr, subscribed, wait_terminal
from tests.security.conftest import Server, Stack, auth_server
from tests.security.test_forgery import STRATEGY

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

# Small limits, as a user sets them: OPS keeps 8 MiB, OPS_CANCELS 4 MiB; OPS takes 40 consumers.
LIMITS = {"KTRDR_OPS_MAX_BYTES": str(8 << 20), "KTRDR_CANCELS_MAX_BYTES": str(4 << 20),
          "KTRDR_OPS_MAX_CONSUMERS": "40"}


def _settings(home: Path, url: str) -> Settings:
    """The stack's settings, read from the environment as every process reads them (LIMITS set)."""
    saved = {k: os.environ.get(k) for k in LIMITS}
    os.environ.update(LIMITS)
    try:
        return make_settings(home, url, orphan_timeout_s=600.0)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """One server for the tests that leave nothing another depends on."""
    server, home = auth_server(tmp_path_factory.mktemp("streams"), "streams")
    yield server, home
    server.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    server, home = auth_server(tmp_path, "streams-own")
    yield server, home
    server.stop()


async def _stack(server: Server, home: Path) -> AsyncIterator[Stack]:
    s = Stack(server, _settings(home, server.url))
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def stack(shared_server: tuple[Server, Path]) -> AsyncIterator[Stack]:
    async for s in _stack(*shared_server):
        yield s


@pytest.fixture
async def own_stack(own_server: tuple[Server, Path]) -> AsyncIterator[Stack]:
    async for s in _stack(*own_server):
        yield s


async def _client(stack: Stack) -> Client:
    c = Client(stack.settings)
    await c.__aenter__()
    return c


# ---------------------------------------------------------------------------------------------- F6
async def test_f6_an_id_published_first_does_not_make_the_real_creation_a_duplicate(stack):
    await stack.start(roles.ORCHESTRATOR, roles.DUMMY)
    cli = await _client(stack)
    try:
        # Ids a workflow's children have are in the parent's `created`: known before they are created.
        by_cancel, by_worker = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=3, interval_s=0.01), \
            RunDummy(op_id=subjects.new_op_id("dummy"), iterations=3, interval_s=0.01)
        attacker, _ = await stack.key(roles.CLI)
        await attacker.jetstream().publish(subjects.cancel(by_cancel.op_id), b"junk",
                                           headers={"Nats-Msg-Id": f"{by_cancel.op_id}.created"})
        worker_key, _ = await stack.key(roles.DUMMY)  # may publish anywhere on ops.dummy.>
        await worker_key.jetstream().publish(subjects.ops(by_worker.op_id, ActorError.name), b"junk",
                                             headers={"Nats-Msg-Id": f"{by_worker.op_id}.created"})
        for cmd in (by_cancel, by_worker):
            await cli.submit(cmd)
            final = await wait_terminal(cli, cmd.op_id, timeout=30)
            assert final.status == "completed" and final.result is not None, final
            assert final.result["iterations_completed"] == 3
            created = [e for e in await cli.events(cmd.op_id) if isinstance(e, OperationCreated)]
            assert len(created) == 1
    finally:
        await cli.__aexit__(None, None, None)


async def test_f6_a_workflow_child_whose_creation_id_was_published_first_still_runs(own_stack, gateway, time_scale):
    """The finding as found: the parent's `created` names its children; a CLI key publishes junk with
    `Nats-Msg-Id: <child>.created` on each child's cancel subject before the child exists. On the
    unfixed code the training child's real creation was dropped and the workflow stayed running."""
    stack = own_stack
    stack.settings = make_settings(stack.settings.home, stack.server.url, orphan_timeout_s=600.0,
                                   ib_port=gateway.port, ib_client_id=11, ib_time_scale=time_scale)
    await stack.start(roles.ORCHESTRATOR, roles.JOB_MANAGER, roles.IB, roles.TRAINER)
    cli = await _client(stack)
    try:
        attacker, _ = await stack.key(roles.CLI)
        ajs = attacker.jetstream()
        cmd = StartTraining(op_id=subjects.new_op_id("training"), strategy_path=str(STRATEGY),
                            strategy_yaml=STRATEGY.read_text(), epochs=1,
                            start=datetime(2023, 1, 2, tzinfo=UTC), end=datetime(2023, 4, 3, tzinfo=UTC))
        children: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()

        async def on_created(msg: Msg) -> None:  # the parent's creation, as any reader sees it
            ev = decode_event_on(msg.subject, msg.data)
            if isinstance(ev, OperationCreated) and not children.done():
                children.set_result(list(ev.children))

        await attacker.subscribe(subjects.ops(cmd.op_id, OperationCreated.name), cb=on_created)
        await subscribed(attacker)
        await cli.submit(cmd)
        kids = await asyncio.wait_for(children, 30)
        assert len(kids) == 2
        for child in kids:
            await ajs.publish(subjects.cancel(child), b"junk", headers={"Nats-Msg-Id": f"{child}.created"})
        final = await wait_terminal(cli, cmd.op_id, timeout=170)
        assert final.status == "completed", final.error
        assert [(await cli.view(k)).status for k in kids] == ["completed", "completed"]
    finally:
        await cli.__aexit__(None, None, None)


# ---------------------------------------------------------------------------------------------- F9
async def test_f9_a_cancel_flood_bigger_than_its_stream_erases_no_other_operation(stack):
    await stack.start(roles.ORCHESTRATOR, roles.DUMMY)
    cli = await _client(stack)
    try:
        victim = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=5, interval_s=0.01)
        await cli.submit(victim)
        assert (await wait_terminal(cli, victim.op_id, timeout=30)).status == "completed"
        before = [type(e).__name__ for e in await cli.events(victim.op_id)]
        attacker, _ = await stack.key(roles.CLI)
        js = attacker.jetstream()
        body = b"x" * 15_000  # a cancel's size at most; 800 of them: 12 MB, beyond OPS's 8 MiB and OPS_CANCELS' 4
        acks = await asyncio.gather(*(js.publish(subjects.cancel(subjects.new_op_id("dummy")), body)
                                      for _ in range(800)))
        after = [type(e).__name__ for e in await cli.events(victim.op_id)]
        assert after == before
        listed = {v.op_id: v for v in await cli.list_operations()}
        assert victim.op_id in listed and listed[victim.op_id].status == "completed"
        assert {a.stream for a in acks} == {"OPS_CANCELS"}
        cancels = await js.stream_info("OPS_CANCELS")
        assert cancels.state.bytes <= 4 << 20 and cancels.state.messages < 800  # its oldest were dropped
        # and a message beyond a bounded cancel's size is refused, not stored
        with pytest.raises(APIError):
            await js.publish(subjects.cancel(victim.op_id), b"x" * 100_000)
    finally:
        await cli.__aexit__(None, None, None)


# ---------------------------------------------------------------------------------------------- malformed
async def test_a_malformed_cancel_flood_writes_a_bounded_number_of_errors(stack):
    orch, dummy = await stack.start(roles.ORCHESTRATOR, roles.DUMMY)
    cli = await _client(stack)
    try:
        running = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=4, interval_s=0.01)
        await cli.submit(running)
        assert (await wait_terminal(cli, running.op_id, timeout=30)).status == "completed"
        attacker, _ = await stack.key(roles.CLI)
        js = attacker.jetstream()
        others = [subjects.new_op_id("dummy") for _ in range(150)]
        foreign = json.dumps({"type": "CancelOperation", "op_id": others[0]}).encode()  # names another op
        await asyncio.gather(*(js.publish(subjects.cancel(running.op_id), b"{not json" if i % 2 else foreign)
                               for i in range(150)))
        await asyncio.gather(*(js.publish(subjects.cancel(o), b"junk") for o in others))
        await eventually(lambda: orch.dropped_cancels >= 300 and dummy.dropped_cancels >= 300, timeout=30)
        await orch.flush_progress(acked=True)
        named = {running.op_id, *others}
        errors: list[str] = []  # the ActorErrors filed under the operations this flood named
        await read_events(cli.js, [subjects.all_ops(ActorError.name)],
                          lambda s, d: errors.extend([s] if s.split(".")[2] in named else []))
        assert len(errors) <= _actor.MALFORMED_REPORTS_PER_WINDOW, len(errors)
        mine = [e for e in await cli.events(running.op_id) if isinstance(e, ActorError)]
        assert len(mine) == 1 and "malformed cancel request ignored" in mine[0].error
    finally:
        await cli.__aexit__(None, None, None)


# ---------------------------------------------------------------------------------------------- F8
async def test_f8_an_observer_key_fills_no_consumer_slot_the_system_needs(own_stack):
    stack = own_stack
    await stack.start(roles.ORCHESTRATOR)
    observer, errors = await stack.key(roles.OBSERVER)
    js = observer.jetstream()
    # no durable: neither by name nor through the unnamed create
    for subject in ("$JS.API.CONSUMER.CREATE.OPS.evil", "$JS.API.CONSUMER.CREATE.OPS.evil.ops.>",
                    "$JS.API.CONSUMER.DURABLE.CREATE.OPS.evil"):
        with contextlib.suppress(Exception):
            await observer.request(subject, b'{"stream_name":"OPS","config":{"durable_name":"evil"}}', timeout=1)
        await errors.wait_for(f'publish to "{subject.lower()}"')
    reply = await observer.request("$JS.API.CONSUMER.CREATE.OPS", json.dumps(
        {"stream_name": "OPS", "config": {"durable_name": "evil", "ack_policy": "none",
                                          "deliver_subject": observer.new_inbox()}}).encode(), timeout=5)
    assert b"ephemeral" in reply.data
    # as many ephemeral ones as OPS takes, each kept alive by a subscription (nobody else can make one)
    made: list[str] = []
    for _ in range(int(LIMITS["KTRDR_OPS_MAX_CONSUMERS"]) + 5):
        sub = await observer.subscribe(observer.new_inbox())
        try:
            info = await js.add_consumer("OPS", api.ConsumerConfig(deliver_subject=sub.subject,
                                                                   ack_policy=api.AckPolicy.NONE))
        except APIError as exc:
            assert "maximum consumers" in str(exc)
            break
        made.append(info.name)
    else:
        raise AssertionError("OPS took more consumers than its cap")
    await subscribed(observer)
    # `down` / `up`: every actor starts again and works; `ops list` reads
    for a in list(stack.actors):
        await a.stop()
        stack.actors.remove(a)
    await stack.start(roles.ORCHESTRATOR, roles.DUMMY)
    cli = await _client(stack)
    try:
        cap = int(LIMITS["KTRDR_OPS_MAX_CONSUMERS"])
        assert (await cli.js.stream_info("OPS")).state.consumer_count == cap  # still all held
        cmd = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=3, interval_s=0.01)
        await cli.submit(cmd)
        # watched as `ops watch` does (its ordered consumer has no room: direct gets, then live)
        final = await wait_terminal(cli, cmd.op_id, timeout=30)
        assert final.status == "completed" and final.result is not None
        assert final.result["iterations_completed"] == 3
        assert (await cli.view(cmd.op_id)).status == "completed"
        listed = await asyncio.to_thread(run_ktrdr, stack.env(), "ops", "list", "--json", timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert cmd.op_id in listed.stdout
    finally:
        await cli.__aexit__(None, None, None)
        for name in made:
            with contextlib.suppress(Exception):
                await js.delete_consumer("OPS", name)


# ---------------------------------------------------------------------------------------------- migration
async def test_an_old_store_is_migrated_without_losing_an_event(own_stack):
    stack = own_stack
    orch_key, _ = await stack.key(roles.ORCHESTRATOR)
    js = orch_key.jetstream()
    # the previous version's OPS: every ops subject, cancels included
    await js.add_stream(api.StreamConfig(name="OPS", subjects=["ops.>"], storage=api.StorageType.FILE,
                                         allow_direct=True, duplicate_window=120.0))
    op = RunDummy(op_id=subjects.new_op_id("dummy"), iterations=1, interval_s=0.0)
    created = OperationCreated(op_id=op.op_id, domain="dummy", op_type="dummy", command=op,
                               actor=f"{roles.actor_id_prefix(roles.ORCHESTRATOR)}old")
    await js.publish(subjects.event(created), encode(created))
    cancel = json.dumps({"type": "CancelOperation", "op_id": op.op_id}).encode()
    assert (await js.publish(subjects.cancel(op.op_id), cancel)).stream == "OPS"
    before = (await js.stream_info("OPS")).state.messages
    await stack.start(roles.ORCHESTRATOR)  # provisions with upgrade
    ops_info = await js.stream_info("OPS")
    assert ops_info.config.subjects != ["ops.>"]
    assert ops_info.state.messages >= before  # nothing lost (the orchestrator may have added its own)
    assert (await js.stream_info("OPS_CANCELS")).config.subjects == [subjects.CANCEL_ALL]
    assert sorted(ops_info.config.subjects or []) == sorted(subjects.OPS_SUBJECTS)
    events = await read_operation(js, op.op_id)  # the old cancel too: it stays where it was stored
    assert [type(e) for e in events][:2] == [OperationCreated, CancelOperation]
    assert (await js.publish(subjects.cancel(op.op_id), cancel)).stream == subjects.STREAM_CANCELS


# ---------------------------------------------------------------------------------------------- ids
def test_ids_are_keyed_and_the_orchestrators_key_outlives_it(tmp_path: Path):
    a, b = subjects.MsgIds(subjects.new_dedupe_key()), subjects.MsgIds(subjects.new_dedupe_key())
    op = subjects.new_op_id("dummy")
    assert a.created(op) == a.created(op) != b.created(op)  # a retry is the same message; nobody else's
    assert f"{op}.created" != a.created(op) and not a.created(op).endswith(".created")
    assert len({a.event(op, "dummy-x", n) for n in range(1000)}) == 1000
    assert a.terminal(op, "dummy-x") != a.work(op) != a.created(op)
    # without a seed: a 0600 file in KTRDR_HOME, the same at every start
    plain = make_settings(tmp_path / "plain", "nats://127.0.0.1:1")
    first = _actor.lasting_dedupe_key(plain, roles.ORCHESTRATOR)
    assert _actor.lasting_dedupe_key(plain, roles.ORCHESTRATOR) == first
    assert _actor.dedupe_key_path(plain, roles.ORCHESTRATOR).stat().st_mode & 0o777 == 0o600
    # with auth: derived from the role's seed (nothing written), the same across restarts
    home = tmp_path / "auth-home"
    auth.init(home)
    keyed = make_settings(home, "nats://127.0.0.1:1")
    assert _actor.lasting_dedupe_key(keyed, roles.ORCHESTRATOR) == _actor.lasting_dedupe_key(keyed, roles.ORCHESTRATOR)
    assert _actor.lasting_dedupe_key(keyed, roles.ORCHESTRATOR) != first
    assert not _actor.dedupe_key_path(keyed, roles.ORCHESTRATOR).exists()
