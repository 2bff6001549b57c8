"""The nemesis's cluster: three nats-servers (nodes "1", "2", "3"), each in its own network
namespace, routed to each other over point-to-point links; two orchestrators, "o1" next to node 1
and "o2" next to node 2 (each linked to, and connected to, its own node only: a partition that cuts
the active one's node off leaves the standby with the majority; one is active by the leader lease,
actors/_orch_leader.py), the workers in "w", the load generator and the checker on the host, those
two linked to every node (bench.nemesis.net). The servers run without users, as the tests' servers do, with streams and
buckets at R3 (KTRDR_REPLICAS=3), rendered by ktrdr.natsconf with the listeners moved off loopback:
a namespace's loopback is its own, and natsconf (rightly) refuses a non-loopback listener without
TLS for users, while these addresses exist only in namespaces this harness made.

`proxied=True` routes the client links of the orchestrators and the workers and every server<->server
route through a userspace delay proxy (bench.nemesis.proxy, one process per link, in the namespace of
the side that dials): the routes name 127.0.0.1:<ROUTE_PROXY_BASE + m> in node n's namespace, which is
n's proxy to node m, and each node advertises its route at that address, so a route learnt by gossip
goes through the proxies too; clients are told no other servers' URLs (`no_advertise`), so a
reconnect cannot go around its proxy. `set_proxies(mode)` switches them all (clean, delay, loss).

Processes: `kill9`, `restart`, `pause`/`resume` (SIGSTOP/SIGCONT) of a node or an actor process;
`connected_node(place)` reads the nodes' /connz to say which node a place's connection is on.
Everything is stopped in `close()` (and what a crashed run left, by net.cleanup_stale()).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.nemesis.net import HOST, Topology, all_pairs, cleanup_stale
from ktrdr import natsconf
from ktrdr.client import Client
from ktrdr.config import Settings
from ktrdr.embedded import nats_server_binary

NODES = ("1", "2", "3")
ORCHS = {"o1": "1", "o2": "2"}  # each orchestrator's place and the one node it is linked to
ORCH = "o1"  # the first orchestrator's place (the name the single-orchestrator harness had)
WORKERS = "w"
CLIENT_PORT, ROUTE_PORT, HTTP_PORT = 4222, 6222, 8222  # the same in every node's namespace
START_TIMEOUT_S = 20.0  # a node accepting connections, an actor's heartbeat
HTTP_TIMEOUT_S = 2.0
CLIENT_PROXY_BASE, ROUTE_PROXY_BASE = 5000, 7000  # + the node's number: a proxy's port on 127.0.0.1
PROXY_SIGNALS = {"delay": signal.SIGUSR1, "loss": signal.SIGUSR2, "clean": signal.SIGHUP}
# Fast failure detection, so a fault shows within a few seconds (the tests' make_settings values, a
# little wider: the actors run as processes on a loaded machine).
ACTOR_ENV = {"KTRDR_HEARTBEAT_S": "0.5", "KTRDR_WORKER_TIMEOUT": "4", "KTRDR_ORPHAN_TIMEOUT": "8",
             "KTRDR_DRAIN_TIMEOUT": "1", "KTRDR_REPLICAS": "3",
             "KTRDR_PING_S": "1"}  # a client on a cut-off node leaves it for another within ~3 s


def _rewrite(text: str, old: str, new: str) -> str:
    if old not in text:
        raise RuntimeError(f"natsconf's output lacks {old!r}: the nemesis's rewrite needs updating")
    return text.replace(old, new)


@dataclass
class Proc:
    name: str
    place: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    paused: bool = False

    def start(self, prefix: list[str]) -> None:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen([*prefix, *self.argv], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid  # `ip netns exec` execs the program: this is its pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
        self.paused = sig == signal.SIGSTOP or (self.paused and sig != signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        assert self.popen is not None
        self.signal(signal.SIGCONT)
        self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout)

    def kill9(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.kill()
            self.popen.wait(10)


@dataclass
class NemesisCluster:
    """Start with `async with NemesisCluster(...) as c:`; `c.client` is a Client on the host."""

    sync_interval: str = "2m"
    workers: int = 2  # dummy worker processes in namespace "w"
    roles_per_worker: tuple[str, ...] = ("dummy",)
    proxied: bool = False  # every link but the host's through a delay proxy (bench.nemesis.proxy)
    orchestrators: int = 2  # the first this many of ORCHS (1: no standby, no leader takeover)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ktrdr-nemesis-")))
    topo: Topology = field(init=False)
    orchs: dict[str, str] = field(init=False)  # the orchestrators this cluster runs (of ORCHS)
    nodes: dict[str, Proc] = field(default_factory=dict)
    actors: dict[str, Proc] = field(default_factory=dict)
    proxies: dict[str, Proc] = field(default_factory=dict)
    client: Client | None = None
    marks: dict[str, float] = field(default_factory=dict)  # loop times a fault records ("fault", ...)
    notes: list[str] = field(default_factory=list)  # what a fault saw, for its row's notes
    seen_states: dict[str, str] = field(default_factory=dict)  # the read that ended wait_orchestrator
    watchers: list[asyncio.Task[None]] = field(default_factory=list)  # a fault's own measurements

    def __post_init__(self) -> None:
        self.orchs = dict(list(ORCHS.items())[:self.orchestrators])
        places = [*NODES, *self.orchs, WORKERS, HOST]
        pairs = all_pairs(list(NODES)) + [(n, p) for p in (WORKERS, HOST) for n in NODES] + \
            [(n, o) for o, n in self.orchs.items()]
        self.topo = Topology(places, pairs)

    # ------------------------------------------------------------------ addresses
    def reachable(self, place: str) -> list[str]:
        """The nodes a place has a link to."""
        return [n for n in NODES if frozenset((n, place)) in self.topo.links]

    def urls(self, place: str) -> str:
        """NATS_URL for a client in `place`: every node it is linked to, at the address its link to it
        has (through the place's proxy to it when proxied; the host is never proxied)."""
        if self.proxied and place != HOST:
            return ",".join(f"nats://127.0.0.1:{CLIENT_PROXY_BASE + int(n)}" for n in self.reachable(place))
        return ",".join(f"nats://{self.topo.addr(n, place)}:{CLIENT_PORT}" for n in self.reachable(place))

    def settings(self, place: str = HOST) -> Settings:
        home = self.tmp / "home"
        home.mkdir(exist_ok=True)
        return Settings(home=home, nats_url=self.urls(place), replicas=3, heartbeat_s=0.5, worker_timeout_s=4.0,
                        orphan_timeout_s=8.0)

    def _conf(self, n: str) -> Path:
        if self.proxied:
            routes = tuple(natsconf.route_url("127.0.0.1", ROUTE_PROXY_BASE + int(m)) for m in NODES if m != n)
        else:
            routes = tuple(natsconf.route_url(self.topo.addr(m, n), ROUTE_PORT) for m in NODES if m != n)
        spec = natsconf.NodeSpec(server_name=f"ktrdr-{n}", host="127.0.0.1", port=CLIENT_PORT,
                                 store_dir=self.tmp / f"n{n}",
                                 cluster=natsconf.Cluster("ktrdr", "127.0.0.1", ROUTE_PORT, routes),
                                 http_port=HTTP_PORT)
        text = natsconf.render_node(spec, limits=natsconf.Limits(sync_interval=self.sync_interval))
        text = _rewrite(text, 'host: "127.0.0.1"', 'host: "0.0.0.0"')
        listen = f'listen: "0.0.0.0:{ROUTE_PORT}"'
        if self.proxied:  # peers reach this node's route at their own proxy to it; clients learn no URLs
            listen += f'\n  advertise: "127.0.0.1:{ROUTE_PROXY_BASE + int(n)}"\n  no_advertise: true'
        text = _rewrite(text, f'listen: "127.0.0.1:{ROUTE_PORT}"', listen)
        text = _rewrite(text, f'http: "127.0.0.1:{HTTP_PORT}"', f'http: "0.0.0.0:{HTTP_PORT}"')
        path = self.tmp / f"n{n}.conf"
        natsconf.write_atomic(path, text)
        return path

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> NemesisCluster:
        cleanup_stale()
        try:
            await asyncio.to_thread(self.topo.open)
            if self.proxied:
                await self._start_proxies()
            for n in NODES:
                self.nodes[n] = Proc(f"node{n}", n, [nats_server_binary(), "-c", str(self._conf(n))], dict(os.environ),
                                     self.tmp / f"n{n}.log")
                self.nodes[n].start(self.topo.exec_prefix(n))
            for n in NODES:
                await self.wait_node(n)
            self.client = Client(self.settings(HOST), reconnect_attempts=-1, name="nemesis")
            await self.client.__aenter__()
            await self._provision()
            env = {**os.environ, **ACTOR_ENV, "KTRDR_HOME": str(self.tmp / "home")}
            env.pop("NATS_URL", None)
            first, *others = self.orchs
            self._actor(first, first, ("orchestrator",), env)  # active first, so the run starts alike
            await self.wait_orchestrator(first, "active")
            for o in others:
                self._actor(o, o, ("orchestrator",), env)
            for i in range(self.workers):
                self._actor(f"worker{i + 1}", WORKERS, self.roles_per_worker, env)
            await self.client.wait_ready(["orchestrator", *self.roles_per_worker], START_TIMEOUT_S)
            for o in others:
                await self.wait_orchestrator(o, "standby")
        except BaseException:
            await self.close()
            raise
        return self

    async def _provision(self) -> None:
        """The streams at R3, retried while the new cluster elects its meta leader."""
        assert self.client is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while True:
            try:
                await self.client.ensure_streams()
                return
            except Exception:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.5)

    def _actor(self, name: str, place: str, roles: tuple[str, ...], env: dict[str, str]) -> None:
        argv = [sys.executable, "-m", "actors", *roles, "--url", self.urls(place),
                "--log-level", os.environ.get("KTRDR_NEMESIS_LOG_LEVEL", "INFO")]  # DEBUG when debugging a run
        proc = Proc(name, place, argv, env, self.tmp / f"{name}.log")
        proc.start(self.topo.exec_prefix(place))
        self.actors[name] = proc

    async def _start_proxies(self) -> None:
        """One proxy per proxied link, in the namespace of the side that dials; back once all listen."""
        links = [(n, f"r{n}{m}", ROUTE_PROXY_BASE + int(m), self.topo.addr(m, n), ROUTE_PORT)
                 for n in NODES for m in NODES if m != n]
        links += [(p, f"c{p}{n}", CLIENT_PROXY_BASE + int(n), self.topo.addr(n, p), CLIENT_PORT)
                  for p in (*self.orchs, WORKERS) for n in self.reachable(p)]
        for place, name, port, host, target in links:
            ready = self.tmp / f"proxy-{name}.ready"
            argv = [sys.executable, "-m", "bench.nemesis.proxy", str(port), host, str(target), str(ready)]
            proc = Proc(f"proxy-{name}", place, argv, dict(os.environ), self.tmp / f"proxy-{name}.log")
            proc.start(self.topo.exec_prefix(place))
            self.proxies[name] = proc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        for name, proc in self.proxies.items():
            while not (self.tmp / f"proxy-{name}.ready").exists():
                if not proc.alive() or loop.time() > deadline:
                    raise RuntimeError(f"delay proxy {name} not listening; see {proc.log}")
                await asyncio.sleep(0.05)

    def set_proxies(self, mode: str) -> None:
        """Every proxy to `mode`: "clean", "delay" or "loss" (bench.nemesis.proxy)."""
        for proc in self.proxies.values():
            proc.signal(PROXY_SIGNALS[mode])

    # ------------------------------------------------------------------ the orchestrators
    async def orch_states(self) -> dict[str, str]:
        """Each running orchestrator process's state as its heartbeat says ("active, leader epoch N",
        "standby (...)"), by its place; "" for one without a live heartbeat."""
        assert self.client is not None
        beats = {hb.pid: hb.state for hb in await self.client.live_actors()
                 if hb.role == "orchestrator" and not hb.stopping}
        return {o: beats.get(self.actors[o].pid, "") for o in self.orchs if o in self.actors and self.actors[o].alive()}

    async def active_orchestrator(self, timeout: float = START_TIMEOUT_S) -> str:
        """The place of the orchestrator that says it is active (waits while none does)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with contextlib.suppress(Exception):
                active = [o for o, st in (await self.orch_states()).items()
                          if st.startswith("active") and not st.endswith("(starting)")]
                if len(active) == 1:
                    return active[0]
            if loop.time() > deadline:
                raise TimeoutError(f"no one active orchestrator within {timeout} s")
            await asyncio.sleep(0.1)

    async def wait_orchestrator(self, place: str, prefix: str, timeout: float = START_TIMEOUT_S) -> float:
        """Until the orchestrator in `place` says a state starting with `prefix`; the loop time then
        (`self.seen_states`: every orchestrator's state in that same read)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with contextlib.suppress(Exception):
                states = await self.orch_states()
                if states.get(place, "").startswith(prefix):
                    self.seen_states = states
                    return loop.time()
            if loop.time() > deadline:
                raise TimeoutError(f"orchestrator {place} not {prefix!r} within {timeout} s")
            await asyncio.sleep(0.05)

    async def wait_settled(self, timeout: float = START_TIMEOUT_S) -> dict[str, str]:
        """Until exactly one orchestrator says it is active (not starting) and every other one says
        standby; that read's states (which one leads is not asked: a lease that lapsed while its
        stream re-elected at the heal may go to either)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        states: dict[str, str] = {}
        while True:
            with contextlib.suppress(Exception):
                states = await self.orch_states()
                active = [o for o, st in states.items() if st.startswith("active") and not st.endswith("(starting)")]
                standby = [o for o, st in states.items() if st.startswith("standby")]
                if len(active) == 1 and len(active) + len(standby) == len(states) == len(self.orchs):
                    return states
            if loop.time() > deadline:
                raise TimeoutError(f"orchestrators not one active and the rest standby within {timeout} s: {states}")
            await asyncio.sleep(0.05)

    def restart_actor(self, name: str) -> None:
        proc = self.actors[name]
        proc.stop()
        proc.start(self.topo.exec_prefix(proc.place))

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for task in self.watchers:
            task.cancel()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.__aexit__(None, None, None), 10)
            self.client = None
        for proc in [*self.actors.values(), *self.nodes.values(), *self.proxies.values()]:
            await asyncio.to_thread(proc.stop)
        await asyncio.to_thread(self.topo.close)
        if os.environ.get("KTRDR_NEMESIS_KEEP") is None:  # keep the logs when asked (debugging a run)
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------ faults on processes
    async def wait_node(self, n: str, timeout: float = START_TIMEOUT_S) -> None:
        addr = (self.topo.addr(n, HOST), CLIENT_PORT)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if not self.nodes[n].alive():
                raise RuntimeError(f"nats-server {n} exited; see {self.nodes[n].log}")
            with contextlib.suppress(OSError):
                await asyncio.to_thread(socket.create_connection(addr, timeout=0.5).close)
                return
            if loop.time() > deadline:
                raise TimeoutError(f"nats-server {n} not accepting connections within {timeout} s")
            await asyncio.sleep(0.1)

    async def restart_node(self, n: str) -> None:
        proc = self.nodes[n]
        await asyncio.to_thread(proc.stop)
        proc.start(self.topo.exec_prefix(n))
        await self.wait_node(n)

    # ------------------------------------------------------------------ what the nodes say
    def _http(self, n: str, path: str) -> dict:  # type: ignore[type-arg]
        url = f"http://{self.topo.addr(n, HOST)}:{HTTP_PORT}{path}"
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as r:
            return json.loads(r.read())

    def connected_nodes(self, place: str) -> list[str]:
        """The nodes that hold a connection from `place` (read from each node's /connz)."""
        found = []
        for n in NODES:
            if not self.nodes[n].alive() or self.nodes[n].paused:
                continue
            try:
                conns = self._http(n, "/connz").get("connections") or []
            except OSError:
                continue
            if any(c.get("ip") == self.topo.addr(place, n) for c in conns):
                found.append(n)
        return found

    def stream_leader(self, stream: str = "OPS") -> str | None:
        """The node leading `stream` (from /jsz), None when no node says."""
        for n in NODES:
            if not self.nodes[n].alive() or self.nodes[n].paused:
                continue
            try:
                jsz = self._http(n, "/jsz?streams=true")
            except OSError:
                continue
            for acc in jsz.get("account_details") or []:
                for st in acc.get("stream_detail") or []:
                    leader = (st.get("cluster") or {}).get("leader")
                    if st.get("name") == stream and leader:
                        return leader.removeprefix("ktrdr-")
        return None
