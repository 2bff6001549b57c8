"""A finding of the nemesis (orch-node-isolated, bench/nemesis): a standby that takes the leader lease
over while the cluster is still electing stream leaders can fail to activate (its rebuild or its
command consumer answered by an error). It must try again: until it is active in fact it takes no
command, while it holds and renews the lease (and its presence says "active, leader epoch N"), so no
other orchestrator can. Here the first rebuild raises the timeout a server mid-election answers with."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import nats.errors

from actors.orchestrator import Orchestrator
from actors.registry import build
from events.messages import RunDummy
from ktrdr.client import Client
from ktrdr.config import Settings
from tests.helpers import wait_terminal

TERMINAL_S = 15.0  # the takeover (a leader ttl or less: a clean hand-back) and a short dummy


async def test_a_standby_whose_first_activation_fails_activates_again(
        settings: Settings, client: Client, start_actors: Callable[..., asyncio.Future[list[object]]]) -> None:
    (first, _worker) = await start_actors("orchestrator", "dummy")
    standby = build("orchestrator", settings)
    assert isinstance(standby, Orchestrator)
    real, failures = standby._rebuild, []

    async def rebuild_failing_once() -> None:
        if not failures:
            failures.append(1)
            raise nats.errors.TimeoutError  # what a stream without a leader yet answers
        await real()

    standby._rebuild = rebuild_failing_once  # type: ignore[method-assign]
    await standby.start()
    try:
        await first.stop()  # type: ignore[attr-defined]  # hands the lease back: the standby takes it at once
        cmd = RunDummy(op_id="dummy-20261202T070000000000-abcdef", iterations=2, interval_s=0.05)
        await client.submit(cmd)
        view = await wait_terminal(client, cmd.op_id, TERMINAL_S)
        assert failures and view.status == "completed", (failures, view.status)
    finally:
        await asyncio.wait_for(standby.stop(), 10)
