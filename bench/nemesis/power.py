"""Power cuts, for real: nats-server with its JetStream store on the power-cut filesystem (lazyfs.py).

One round: start the server(s) on lazyfs mounts, create a stream (R1 on one node; R3 on a 3-node
cluster, every store on a lazyfs of its own = a coordinated power loss), publish a load of messages
with message ids and wait for each acknowledgement, then cut the power: SIGKILL every server (no
process can sync after that) and drop every write not yet fsynced. The backing directories are then
what the disks would hold after power-on: they are mounted again, the servers restarted, and the
stream read back by sequence. A row in the nemesis format counts the acknowledged messages, the ones
lost (acknowledged, not read back), the duplicates and how long from the restart until a publish to
the stream is acknowledged again. Run with `sync_interval: always` and with the default (2 min).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from bench.nemesis import lazyfs
from ktrdr import natsconf
from ktrdr.embedded import free_port, start_nats_server

STREAM = "POWER"
SUBJECT = "power.ops"
# An OPS-like event: a few hundred bytes (a progress event is 200-400 encoded).
PAYLOAD_BYTES = 300
# Publishes in flight at once (a worker publishes progress without waiting for each ack).
WINDOW = 32
# Bounds of a round: the cluster's election after a restart takes seconds; nothing here waits longer.
RECOVER_TIMEOUT_S = 60.0
READ_TIMEOUT_S = 5.0
READ_BATCH = 1000
SYNC_SETTINGS = {"always": "always", "default": "2m"}
# Acknowledged messages per round (a few seconds of progress events from a busy system).
OPERATIONS = 2000


@dataclass
class Node:
    name: str
    port: int
    backing: Path
    mnt: Path
    conf: Path
    log: Path
    mount: lazyfs.LazyMount | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


def nodes_for(tmp: Path, n: int, sync_interval: str) -> list[Node]:
    limits = natsconf.Limits(sync_interval=sync_interval)
    ports = [free_port() for _ in range(n)]
    out: list[Node] = []
    specs: list[natsconf.NodeSpec | None]
    if n == 1:
        specs = [None]
    else:
        routes = [free_port() for _ in range(n)]
        specs = [*natsconf.cluster_nodes(n, base_dir=tmp, client_ports=ports, route_ports=routes, cluster_name="power")]
    for i, spec in enumerate(specs):
        name = spec.server_name if spec is not None else f"p{i + 1}"
        node = Node(name, ports[i], tmp / f"disk{i + 1}", tmp / f"mnt{i + 1}", tmp / f"p{i + 1}.conf",
                     tmp / f"p{i + 1}.log")
        store = node.mnt / "jetstream"
        if spec is None:
            text = natsconf.render(server_name=node.name, host="127.0.0.1", port=node.port, store_dir=store,
                                   limits=limits)
        else:
            text = natsconf.render_node(dataclasses.replace(spec, store_dir=store), limits=limits)
        natsconf.write_atomic(node.conf, text)
        out.append(node)
    return out


def _power_on(nodes: list[Node]) -> None:
    for node in nodes:
        node.mount = lazyfs.mount(node.backing, node.mnt, log=node.log.with_suffix(".lazyfs.log"))
    for node in nodes:  # a cluster's nodes wait for each other's routes: start them all, then check
        node.proc = start_nats_server(node.mnt / "jetstream", node.port, node.log, conf=node.conf)


def _power_off(nodes: list[Node]) -> list[dict[str, Any]]:
    """The cut: every server killed first (a dead process syncs nothing more), then the caches dropped."""
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
    for node in nodes:
        if node.proc is not None:
            node.proc.wait(10)
    return [node.mount.cut() for node in nodes if node.mount is not None]


def _clean_reboot(nodes: list[Node]) -> None:
    """A clean shutdown (the servers stopped by SIGTERM, the caches flushed as an unmount does) and
    power on again: what was stored before is on disk, as for a stream that existed for a while."""
    for node in nodes:
        if node.proc is not None:
            node.proc.terminate()
    for node in nodes:
        if node.proc is not None:
            node.proc.wait(30)
        if node.mount is not None:
            node.mount.close()
    _power_on(nodes)


def teardown(nodes: list[Node]) -> None:
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(10)
        if node.mount is not None:
            node.mount.close()


async def connect(nodes: list[Node]) -> nats.NATS:
    return await nats.connect(servers=[n.url for n in nodes], connect_timeout=2, max_reconnect_attempts=-1,
                              reconnect_time_wait=0.2)


async def create_stream(js: Any, replicas: int) -> None:
    deadline = time.monotonic() + RECOVER_TIMEOUT_S
    while True:  # a fresh cluster needs a meta leader before it creates anything
        try:
            await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT], storage=StorageType.FILE,
                                             num_replicas=replicas))
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def load(js: Any, operations: int, payload_bytes: int = PAYLOAD_BYTES,
               failures: list[float] | None = None) -> tuple[set[str], int]:
    """Publish `operations` messages, WINDOW at a time; the ids acknowledged and how many failed
    (the monotonic time of each failure goes to `failures` when given)."""
    acked: set[str] = set()
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        mid = f"m{i:07d}"
        try:
            await js.publish(SUBJECT, mid.encode().ljust(payload_bytes, b"."), timeout=5,
                             headers={"Nats-Msg-Id": mid})
            acked.add(mid)
        except Exception:
            failed += 1
            if failures is not None:
                failures.append(time.monotonic())

    for start in range(0, operations, WINDOW):
        await asyncio.gather(*(one(i) for i in range(start, min(start + WINDOW, operations))))
    return acked, failed


async def until_writable(js: Any) -> bool:
    """Wait until a publish to the stream is acknowledged again; False when the stream is gone
    (the server answers and knows no such stream)."""
    began = time.monotonic()
    while time.monotonic() - began < RECOVER_TIMEOUT_S:
        try:
            await js.publish(SUBJECT, b"probe", timeout=1, headers={"Nats-Msg-Id": "probe"})
            return True
        except Exception:
            with contextlib.suppress(Exception):
                if all(s.config.name != STREAM for s in await js.streams_info()):
                    return False
            await asyncio.sleep(0.1)
    raise TimeoutError(f"the stream did not accept a publish within {RECOVER_TIMEOUT_S} s of the restart")


async def _stream_info(js: Any) -> Any:
    """The stream's info once the restarted server answers (it may be rebuilding its state); None
    when the stream is gone."""
    deadline = time.monotonic() + RECOVER_TIMEOUT_S
    while True:
        try:
            return await js.stream_info(STREAM)
        except NotFoundError:
            return None
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _reader(js: Any) -> Any:
    """The read-back consumer, created again while the restarted cluster cannot answer yet (its
    creation times out while the stream's or the consumer's raft group elects: that is the stream
    unavailable, not its messages lost), for up to RECOVER_TIMEOUT_S."""
    deadline = time.monotonic() + RECOVER_TIMEOUT_S
    while True:
        try:
            return await js.pull_subscribe(SUBJECT, stream=STREAM, config=ConsumerConfig(ack_policy=AckPolicy.NONE))
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def read_back(js: Any) -> Counter[str] | None:
    """Every message id stored in the stream, read in batches by an ephemeral pull consumer that
    acknowledges nothing (so nothing is held back); None when the stream is gone."""
    info = await _stream_info(js)
    if info is None:
        return None
    seen: Counter[str] = Counter()
    got = 0
    psub = await _reader(js)
    try:
        while got < info.state.messages:
            try:
                msgs = await psub.fetch(READ_BATCH, timeout=READ_TIMEOUT_S)
            except TimeoutError:
                break  # nothing more is delivered: the count below says what was read
            for msg in msgs:
                got += 1
                mid = (msg.data or b"").split(b".", 1)[0].decode()
                if mid != "probe":
                    seen[mid] += 1
    finally:
        with contextlib.suppress(Exception):
            await psub.unsubscribe()
    return seen


async def power_cut(nodes_n: int, setting: str, operations: int = OPERATIONS) -> dict[str, Any]:
    """One power cut of one node (R1) or of a whole 3-node cluster (R3); its nemesis row."""
    tmp = Path(tempfile.mkdtemp(prefix="ktrdr-power-"))
    nodes = nodes_for(tmp, nodes_n, SYNC_SETTINGS[setting])
    try:
        await asyncio.to_thread(_power_on, nodes)
        nc = await connect(nodes)
        try:
            await create_stream(nc.jetstream(), nodes_n)
        finally:
            await nc.close()
        await asyncio.to_thread(_clean_reboot, nodes)
        nc = await connect(nodes)
        try:
            js = nc.jetstream()
            await until_writable(js)
            acked, failed = await load(js, operations)
        finally:
            await nc.close()
        cut = await asyncio.to_thread(_power_off, nodes)
        healed = time.monotonic()
        await asyncio.to_thread(_power_on, nodes)
        nc = await connect(nodes)
        try:
            js = nc.jetstream()
            trouble: list[str] = []
            try:
                await until_writable(js)
                recover_s = time.monotonic() - healed  # power-on: remount, server start, the first ack
            except TimeoutError as exc:
                recover_s = float("nan")
                trouble.append(str(exc))
            try:
                seen = await read_back(js)
            except Exception as exc:  # a leaderless stream answers nothing: every acked message counts lost
                seen = Counter()
                trouble.append(f"the stream could not be read ({type(exc).__name__})")
        finally:
            await nc.close()
    finally:
        teardown(nodes)
        shutil.rmtree(tmp, ignore_errors=True)
    stored = seen or Counter()
    dropped = sum(int(c.get("dropped_bytes", 0)) for c in cut)
    fsyncs = sum(int(c.get("fsyncs", 0)) for c in cut)
    notes = ["stream created and synced by a clean restart before the load",
             f"lazyfs dropped {dropped / 1024:.0f} KiB unsynced, {fsyncs} fsyncs before the cut"]
    if failed:
        notes.append(f"{failed} publishes not acknowledged")
    if seen is None:
        notes.append("the stream itself was gone after the restart")
    notes += trouble
    return {
        "fault": "power cut, 1 node (R1)" if nodes_n == 1 else f"power cut, {nodes_n} nodes at once (R{nodes_n})",
        "sync_interval": setting,
        "operations": operations,
        "acked": len(acked),
        "lost": len(acked - set(stored)),
        "duplicated": sum(c - 1 for c in stored.values() if c > 1),
        "recover_s": round(recover_s, 3),
        "notes": "; ".join(notes),
    }


def unavailable() -> str | None:
    """Why a power cut cannot be made here (None when it can)."""
    return lazyfs.available() or (None if shutil.which("nats-server") or _bundled() else "no nats-server")


def _bundled() -> bool:
    from ktrdr.embedded import nats_server_binary

    try:
        return os.path.exists(nats_server_binary())
    except Exception:
        return False
