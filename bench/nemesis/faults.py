"""The network and process fault classes: each builds a fresh cluster (bench.nemesis.cluster),
runs the load (bench.nemesis.load), injects its fault while the load runs, holds it, heals it,
then checks (bench.nemesis.checker) and returns its result rows. `NET_FAULTS` maps each name to
its async callable; bench.nemesis.FAULTS gathers them with the disk faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable

from bench.nemesis.checker import check, row, superseded_count
from bench.nemesis.cluster import NODES, WORKERS, NemesisCluster
from bench.nemesis.load import Load, LoadShape
from bench.nemesis.net import HOST, netem_unavailable

Row = dict[str, object]
Fault = Callable[[], Awaitable[list[Row]]]
Inject = Callable[[NemesisCluster, Load], Awaitable[Callable[[], Awaitable[None]]]]

HOLD_S = 8.0  # how long a fault lasts: past the workers' lease time (KTRDR_WORKER_TIMEOUT 4 s), twice
RUNNING_WAIT_S = 30.0  # the load's first operation running, before the fault goes in
LOAD_WAIT_S = 90.0  # the load's publishes all acknowledged or given up, after healing
DELAY = ("delay", "100ms", "50ms")  # Jepsen's packet delay
LOSS = ("loss", "20%")


async def _first_running(c: NemesisCluster, load: Load) -> str | None:
    """The first of the load's operations once a worker runs it (its holder's actor id), or None."""
    assert c.client is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RUNNING_WAIT_S
    while loop.time() < deadline:
        for op in list(load.op_ids):
            with contextlib.suppress(Exception):
                view = await c.client.view(op)
                if view.status == "running" and view.worker:
                    return view.worker
        await asyncio.sleep(0.2)
    return None


async def scenario(fault: str, inject: Inject, *, sync_interval: str = "2m", hold_s: float = HOLD_S,
                   shape: LoadShape = LoadShape(), notes: str = "") -> tuple[Row, dict[str, list[str]]]:
    """One run of one fault class: cluster up, load, fault, heal, check; its result row and the
    checker's findings (every rule's violations)."""
    label = "always" if sync_interval == "always" else "default"
    started = time.monotonic()
    async with NemesisCluster(sync_interval=sync_interval) as c:
        assert c.client is not None
        async with Load(c.client) as load:
            load_task = asyncio.create_task(load.run(shape))
            try:
                holder = await _first_running(c, load)
                heal = await inject(c, load)
                await asyncio.sleep(hold_s)  # the fault's length is the experiment's parameter
                await heal()
                c.topo.heal()
                for n in NODES:  # everything healed before checks: every node up and resumed
                    c.nodes[n].signal(signal.SIGCONT)
                healed = asyncio.get_running_loop().time()
                await asyncio.wait_for(load_task, LOAD_WAIT_S)
            finally:
                if not load_task.done():
                    load_task.cancel()
            await load.normal_operation(healed)
            await load.wait_verdicts()
            stored = await load.collect()
        found = check(load.history, stored)
    extra = f"{notes}; " if notes else ""
    if again := superseded_count(load.history, stored):
        extra += f"{again} unacked event(s) published again under a new seq; "
    extra += f"first holder {holder or 'none within ' + str(RUNNING_WAIT_S) + ' s'}"
    out = row(fault, load.history, found, sync_interval=label, notes=extra)
    out["unacked"] = load.history.unacked  # publishes the load generator gave up on (they were never acked)
    out["run_s"] = round(time.monotonic() - started, 1)
    return out, found


def _heal_nothing() -> Callable[[], Awaitable[None]]:
    async def heal() -> None:  # the topology's heal() restores every link and qdisc
        return None
    return heal


async def _worker_node(c: NemesisCluster) -> str:
    """A node a worker process's connection is on (the first of them; node 1 when none answers)."""
    found = await asyncio.to_thread(c.connected_nodes, WORKERS)
    return found[0] if found else NODES[0]


async def _isolate_workers_node(c: NemesisCluster, load: Load) -> Callable[[], Awaitable[None]]:
    n = await _worker_node(c)
    c.topo.cut([[n], [m for m in NODES if m != n]])  # the servers only: the clients keep their links
    return _heal_nothing()


async def _isolate_node(c: NemesisCluster, load: Load) -> Callable[[], Awaitable[None]]:
    n = await _worker_node(c)
    c.topo.cut([[n], [m for m in c.topo.places if m != n]])  # its clients too: they must reconnect elsewhere
    return _heal_nothing()


async def _bridge(c: NemesisCluster, load: Load) -> Callable[[], Awaitable[None]]:
    c.topo.set_link("1", "3", False)  # 2 sees both sides, 1 and 3 not each other (Jepsen's bridge)
    return _heal_nothing()


async def _client_cut(c: NemesisCluster, load: Load) -> Callable[[], Awaitable[None]]:
    for n in await asyncio.to_thread(c.connected_nodes, WORKERS):
        c.topo.set_link(WORKERS, n, False)  # the workers' links to the servers they were on
    return _heal_nothing()


async def _pause_leader(c: NemesisCluster, load: Load) -> Callable[[], Awaitable[None]]:
    n = await asyncio.to_thread(c.stream_leader, "OPS") or NODES[0]
    c.nodes[n].signal(signal.SIGSTOP)

    async def heal() -> None:
        c.nodes[n].signal(signal.SIGCONT)
    return heal


async def _kill_leader(c: NemesisCluster, load: Load) -> Callable[[], Awaitable[None]]:
    n = await asyncio.to_thread(c.stream_leader, "OPS") or NODES[0]
    c.nodes[n].kill9()

    async def heal() -> None:
        await c.restart_node(n)
    return heal


async def _pause_holder(c: NemesisCluster, load: Load) -> Callable[[], Awaitable[None]]:
    """SIGSTOP of the worker process that holds a running operation (from its heartbeat's pid)."""
    assert c.client is not None
    beats = await c.client.live_actors()
    pids = [b.pid for b in beats if b.busy and b.role == "dummy"]
    procs = [p for p in c.actors.values() if p.alive() and (p.pid in pids or not pids)][:1]
    for p in procs:
        p.signal(signal.SIGSTOP)

    async def heal() -> None:
        for p in procs:
            p.signal(signal.SIGCONT)
    return heal


def _shaped(*netem: str) -> Inject:
    async def inject(c: NemesisCluster, load: Load) -> Callable[[], Awaitable[None]]:
        for a, b in [(lk.a, lk.b) for lk in c.topo.links.values() if HOST not in (lk.a, lk.b)]:
            c.topo.shape(a, b, *netem)  # every link but the checker's own
        return _heal_nothing()
    return inject


def _fault(name: str, inject: Inject, *, needs_netem: bool = False) -> Fault:
    async def run() -> list[Row]:
        if needs_netem and (why := netem_unavailable()):
            return [{"fault": name, "sync_interval": "default", "operations": 0, "acked": 0, "lost": 0,
                     "duplicated": 0, "recover_s": -1.0, "notes": f"not run: {why}"}]
        return [(await scenario(name, inject))[0]]
    run.__name__ = name.replace("-", "_")
    return run


NET_FAULTS: dict[str, Fault] = {
    "partition-worker-node": _fault("partition-worker-node", _isolate_workers_node),
    "partition-node-isolated": _fault("partition-node-isolated", _isolate_node),
    "partition-bridge": _fault("partition-bridge", _bridge),
    "client-cut": _fault("client-cut", _client_cut),
    "pause-server": _fault("pause-server", _pause_leader),
    "pause-worker": _fault("pause-worker", _pause_holder),
    "kill-node": _fault("kill-node", _kill_leader),
    "delay": _fault("delay", _shaped(*DELAY), needs_netem=True),
    "loss": _fault("loss", _shaped(*LOSS), needs_netem=True),
}
QUICK = ("partition-worker-node", "pause-server", "kill-node")  # KTRDR_NEMESIS_QUICK=1 / --quick
