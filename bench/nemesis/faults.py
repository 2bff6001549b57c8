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
from bench.nemesis.cluster import NODES, ORCHS, START_TIMEOUT_S, WORKERS, NemesisCluster
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
# The active orchestrator cut off with its node: the standby can take over only once the lease
# bucket's stream has a leader on the majority (when the cut-off node led it, a raft election:
# nats-server's election timeout is 4-9 s, later on a loaded machine) and then a whole lease time
# (2 s) passed unchanged; a shorter cut heals first and the old leader simply goes on (measured: with
# 6 s, 2 runs in 9 under load had no takeover for that reason).
ORCH_ISOLATION_HOLD_S = 15.0
VERDICT_WAIT_S = 60.0  # an operation submitted at an orchestrator fault reaching its verdict


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
                   shape: LoadShape = LoadShape(), notes: str = "", proxied: bool = False,
                   orchestrators: int = 2) -> tuple[Row, dict[str, list[str]]]:
    """One run of one fault class: cluster up, load, fault, heal, check; its result row and the
    checker's findings (every rule's violations). A fault that records c.marks["recovered"] (the
    orchestrator faults: the standby active) has recover_s from c.marks["fault"] to it; the others
    from the heal to a normal operation completing."""
    label = "always" if sync_interval == "always" else "default"
    started = time.monotonic()
    async with NemesisCluster(sync_interval=sync_interval, proxied=proxied, orchestrators=orchestrators) as c:
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
            if c.watchers:  # each bounded in time by itself
                await asyncio.wait(c.watchers)
            stored = await load.collect()
        found = check(load.history, stored)
    extra = "".join(f"{n}; " for n in [notes, *c.notes] if n)
    if again := superseded_count(load.history, stored):
        extra += f"{again} unacked event(s) published again under a new seq; "
    extra += f"first holder {holder or 'none within ' + str(RUNNING_WAIT_S) + ' s'}"
    out = row(fault, load.history, found, sync_interval=label, notes=extra)
    if "recovered" in c.marks:
        out["recover_s"] = round(c.marks["recovered"] - c.marks["fault"], 2)
    elif "fault" in c.marks:
        out["recover_s"] = -1.0  # the standby never said it was active
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


# ---------------------------------------------------------------------- the orchestrators
async def _verdict_s(c: NemesisCluster, op_id: str, t0: float) -> float | None:
    """Seconds from t0 until the operation's view is terminal (None past VERDICT_WAIT_S)."""
    assert c.client is not None
    loop = asyncio.get_running_loop()
    while loop.time() < t0 + VERDICT_WAIT_S:
        with contextlib.suppress(Exception):
            view = await c.client.view(op_id)
            if view.terminal:
                return loop.time() - t0 if view.status == "completed" else None
        await asyncio.sleep(0.1)
    return None


async def _submit_acknowledged(c: NemesisCluster, load: Load, t0: float) -> str | None:
    """The operation a user submits at the fault, submitted again (a new op id) while its command
    goes unacknowledged (the generator's own connection may be the one cut off): what was never
    acknowledged is owed nothing, what was must complete. None when none was acknowledged in time."""
    loop = asyncio.get_running_loop()
    while loop.time() < t0 + VERDICT_WAIT_S:
        acked = len(load.history.acked)
        op_id = await load.submit(3, 0.1)
        if any(a.kind == "command" and a.op_id == op_id for a in load.history.acked[acked:]):
            if loop.time() - t0 > 1.0:
                c.notes.append(f"the command at the fault acknowledged {loop.time() - t0:.1f} s after it")
            return op_id
    c.notes.append(f"no command acknowledged within {VERDICT_WAIT_S} s of the fault")
    return None


async def _watch_takeover(c: NemesisCluster, load: Load, old: str, standby: str) -> None:
    """From the fault: the standby active (c.marks["recovered"]) and an operation submitted at the
    fault done; then, once healed, one active and the other a standby."""
    t0 = c.marks["fault"]
    op = asyncio.ensure_future(_submit_acknowledged(c, load, t0))  # the "next operation", from the fault on
    try:
        c.marks["recovered"] = await c.wait_orchestrator(standby, "active", VERDICT_WAIT_S)
        c.notes.append(f"{standby} active {c.marks['recovered'] - t0:.1f} s after the fault on {old}")
    except TimeoutError:
        c.notes.append(f"{standby} not active within {VERDICT_WAIT_S} s of the fault on {old}")
    op_id = await op
    done = await _verdict_s(c, op_id, t0) if op_id else None
    c.notes.append(f"an operation submitted at the fault completed {done:.1f} s after it" if done is not None
                   else "the operation submitted at the fault did not complete")
    loop = asyncio.get_running_loop()
    while "healed" not in c.marks and loop.time() < t0 + VERDICT_WAIT_S:
        await asyncio.sleep(0.1)
    try:
        states = await c.wait_settled(START_TIMEOUT_S)
        c.notes.append(f"after healing: {', '.join(f'{o} {st}' for o, st in states.items())}")
        if states.get(old, "").startswith("active"):  # the lease lapsed at the heal (its stream re-elected)
            c.notes.append(f"{old} took the lease back after healing")
    except TimeoutError as e:
        c.notes.append(f"after healing not settled: {e}")


async def _orch_fault(c: NemesisCluster, load: Load, what: str) -> Callable[[], Awaitable[None]]:
    """Kill -9, SIGSTOP or isolate (with its node, on the minority) the active orchestrator."""
    old = await c.active_orchestrator()
    standby = next(o for o in ORCHS if o != old)
    c.marks["fault"] = asyncio.get_running_loop().time()
    if what == "kill":
        c.actors[old].kill9()
    elif what == "pause":
        c.actors[old].signal(signal.SIGSTOP)
    else:  # its node, and it, cut off from everything else (the workers and the host reconnect elsewhere)
        n = ORCHS[old]
        c.topo.cut([[n, old], [p for p in c.topo.places if p not in (n, old)]])
    c.watchers.append(asyncio.create_task(_watch_takeover(c, load, old, standby)))

    async def heal() -> None:
        if what == "kill":
            await asyncio.to_thread(c.restart_actor, old)  # back as a standby
        elif what == "pause":
            c.actors[old].signal(signal.SIGCONT)
        c.marks["healed"] = asyncio.get_running_loop().time()  # (the isolation: the topology's heal)
    return heal


async def _kill_orchestrator(c: NemesisCluster, load: Load) -> Callable[[], Awaitable[None]]:
    return await _orch_fault(c, load, "kill")


async def _pause_orchestrator(c: NemesisCluster, load: Load) -> Callable[[], Awaitable[None]]:
    return await _orch_fault(c, load, "pause")


async def _isolate_orchestrator(c: NemesisCluster, load: Load) -> Callable[[], Awaitable[None]]:
    return await _orch_fault(c, load, "isolate")


# ---------------------------------------------------------------------- delay and loss
def _proxied(mode: str) -> Inject:
    """Every proxy (client links but the host's, and every route) to `mode`; healed back to clean."""
    async def inject(c: NemesisCluster, load: Load) -> Callable[[], Awaitable[None]]:
        c.set_proxies(mode)

        async def heal() -> None:
            c.set_proxies("clean")
        return heal
    return inject


def _shaped(*netem: str) -> Inject:
    async def inject(c: NemesisCluster, load: Load) -> Callable[[], Awaitable[None]]:
        for a, b in [(lk.a, lk.b) for lk in c.topo.links.values() if HOST not in (lk.a, lk.b)]:
            c.topo.shape(a, b, *netem)  # every link but the checker's own
        return _heal_nothing()
    return inject


def _fault(name: str, inject: Inject, hold_s: float = HOLD_S) -> Fault:
    async def run() -> list[Row]:
        return [(await scenario(name, inject, hold_s=hold_s))[0]]
    run.__name__ = name.replace("-", "_")
    return run


def net_shaped(netem: tuple[str, ...], mode: str) -> tuple[Inject, bool, str]:
    """The inject for a delay or loss: `tc netem` where the kernel has it, else the userspace proxy;
    (inject, proxied, the note saying which ran)."""
    why = netem_unavailable()
    if why is None:
        return _shaped(*netem), False, f"tc netem {' '.join(netem)}"
    what = "100 +/- 50 ms on every chunk" if mode == "delay" else "0.2-1 s stalls every 2-5 s"
    return _proxied(mode), True, f"userspace proxy, {what} ({why})"


def _shaped_fault(name: str, netem: tuple[str, ...], mode: str) -> Fault:
    async def run() -> list[Row]:
        inject, proxied, note = net_shaped(netem, mode)
        return [(await scenario(name, inject, proxied=proxied, notes=note))[0]]
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
    "delay": _shaped_fault("delay", DELAY, "delay"),
    "loss": _shaped_fault("loss", LOSS, "loss"),
    "orch-kill": _fault("orch-kill", _kill_orchestrator),
    "orch-pause": _fault("orch-pause", _pause_orchestrator),
    "orch-node-isolated": _fault("orch-node-isolated", _isolate_orchestrator, ORCH_ISOLATION_HOLD_S),
}
QUICK = ("partition-worker-node", "pause-server", "kill-node")  # KTRDR_NEMESIS_QUICK=1 / --quick
