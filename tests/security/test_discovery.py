"""Discovery with auth on (every role's real NKEY): the cli and observer logins may ping, and read the
answers on their own inbox; each actor, with its role's key, answers its own service's discovery
subjects; a worker login can neither send discovery requests nor subscribe another service's subjects
(so it cannot pretend to be the orchestrator to a `$SRV.PING.ktrdr-orchestrator` caller)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from nats.micro.service import ServicePing

from events import roles, subjects
from tests.helpers import gather_answers, subscribed
from tests.security.conftest import Stack, module_stack

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with module_stack(tmp_path_factory, "discovery", roles.ORCHESTRATOR, roles.DUMMY) as s:
        yield s


@pytest.mark.parametrize("role", [roles.CLI, roles.OBSERVER])
async def test_a_reader_login_pings_every_actor_and_reads_the_answers(stack: Stack, role: str) -> None:
    nc, errors = await stack.key(role)
    answers = [ServicePing.from_dict(a) for a in await gather_answers(nc, "$SRV.PING", len(stack.actors))]
    assert {p.id for p in answers} == {subjects.service_id(a.id) for a in stack.actors}
    assert {p.metadata["role"] for p in answers} == {roles.ORCHESTRATOR, roles.DUMMY}
    # a plain request, narrowed to one service: the first (only) answer
    reply = await nc.request("$SRV.INFO.ktrdr-orchestrator", b"", timeout=5)
    assert json.loads(reply.data)["name"] == "ktrdr-orchestrator"
    dummy = next(a for a in stack.actors if a.role == roles.DUMMY)
    reply = await nc.request(f"$SRV.STATS.ktrdr-dummy.{subjects.service_id(dummy.id)}", b"", timeout=5)
    assert "work-dummy-any" in {e["name"] for e in json.loads(reply.data)["endpoints"]}
    assert errors.permission_errors() == []


@pytest.mark.parametrize("role", [roles.TRAINER, roles.JOB_MANAGER, roles.DUMMY, roles.IB])
async def test_an_actor_login_cannot_send_discovery_requests(stack: Stack, role: str) -> None:
    nc, errors = await stack.key(role)
    await nc.publish("$SRV.PING", b"", reply=nc.new_inbox())
    await errors.wait_for('publish to "$srv.ping"')
    await nc.publish("$SRV.INFO.ktrdr-orchestrator", b"", reply=nc.new_inbox())
    await errors.wait_for('publish to "$srv.info.ktrdr-orchestrator"')


async def test_a_worker_login_cannot_answer_for_another_service(stack: Stack) -> None:
    nc, errors = await stack.key(roles.TRAINER)
    orch = next(a for a in stack.actors if a.role == roles.ORCHESTRATOR)
    for subject in ("$SRV.PING.ktrdr-orchestrator", f"$SRV.INFO.ktrdr-orchestrator.{subjects.service_id(orch.id)}",
                    "$SRV.STATS.ktrdr-dummy", "$SRV.>", "$SRV.PING.>"):
        await nc.subscribe(subject)
        await errors.wait_for(f'subscription to "{subject.lower()}"')
    # its own service's subjects it may take (a trainer process answers there)
    await nc.subscribe("$SRV.PING.ktrdr-trainer")
    await nc.subscribe("$SRV.STATS.ktrdr-trainer.trainer-somehost-1-abcd")
    await subscribed(nc)
    assert not any("ktrdr-trainer" in e for e in errors.permission_errors())
    # so a cli caller asking the orchestrator gets the orchestrator only
    cli, _ = await stack.key(roles.CLI)
    reply = await cli.request("$SRV.PING.ktrdr-orchestrator", b"", timeout=5)
    assert json.loads(reply.data)["metadata"]["actor_id"] == orch.id
