"""Network namespaces for the nemesis: each nats-server and each group of clients in a namespace of
its own, joined by point-to-point veth links the harness owns, so a partition is a link set down and
a delay is `tc netem` on one link. Traffic stays inside these namespaces and the host's ends of its
links (addresses in 10.<net>.<link>.0/24, chosen per run).

Names start with PREFIX and a per-run token, and a marker file under MARKERS records the owning
process: `cleanup_stale()` removes what a crashed run left (its processes, namespaces and so its
links), and `Topology.close()` removes a run's own in its `finally`. Linux only; root needed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "kn"  # every namespace and link this harness makes starts with it (interface names: 15 chars)
MARKERS = Path("/run/ktrdr-nemesis")
IP_TIMEOUT_S = 10.0  # one `ip`/`tc` command; they answer in milliseconds
HOST = "h"  # the host's own end (the load generator and checker run there)


class NetError(RuntimeError):
    pass


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *(("-n", ns) if ns else ()), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if check and res.returncode != 0:
        raise NetError(f"{' '.join(cmd)}: {res.stderr.strip()}")
    return res


def tc(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", "netns", "exec", ns, "tc", *args] if ns else ["tc", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if check and res.returncode != 0:
        raise NetError(f"{' '.join(cmd)}: {res.stderr.strip()}")
    return res


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None when they can): a test skips with this reason."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"{PREFIX}probe{secrets.token_hex(2)}"
    try:
        res = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
        if res.returncode != 0:
            return f"`ip netns add` fails here: {res.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=IP_TIMEOUT_S)
    return None


def netem_unavailable() -> str | None:
    """Why `tc netem` cannot delay or drop here (a kernel without sch_netem), None when it can."""
    if shutil.which("tc") is None:
        return "tc (iproute2) is not installed"
    probe = f"{PREFIX}nq{secrets.token_hex(2)}"
    try:
        ip("link", "add", probe, "type", "veth", "peer", "name", probe + "p")
        res = tc("qdisc", "add", "dev", probe, "root", "netem", "delay", "1ms", check=False)
        return None if res.returncode == 0 else f"tc netem: {res.stderr.strip()} (the kernel lacks sch_netem)"
    except NetError as exc:
        return str(exc)
    finally:
        ip("link", "del", probe, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_ns(ns: str) -> None:
    """SIGKILL whatever runs in `ns` (SIGCONT first: a paused process dies only once resumed), then delete it."""
    res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    for pid in (int(p) for p in res.stdout.split() if p.isdigit()):
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=IP_TIMEOUT_S)


def cleanup_stale() -> list[str]:
    """Remove the namespaces (their processes and links) of runs whose owner died; returns their names."""
    removed: list[str] = []
    if shutil.which("ip") is None:
        return removed
    live: set[str] = set()
    if MARKERS.is_dir():
        for marker in MARKERS.iterdir():
            try:
                pid = int(marker.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                live.add(marker.name)
            else:
                marker.unlink(missing_ok=True)
    res = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    for line in res.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX) and name[len(PREFIX):len(PREFIX) + 4] not in live:
            _kill_ns(name)
            removed.append(name)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    for line in links.stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(PREFIX) and name[len(PREFIX):len(PREFIX) + 4] not in live:
            ip("link", "del", name, check=False)
            removed.append(name)
    return removed


@dataclass
class Link:
    """One veth pair between two places (a namespace name, or HOST): its ends and addresses."""

    a: str
    b: str
    dev_a: str
    dev_b: str
    addr_a: str
    addr_b: str
    up: bool = True
    shaped: bool = False

    def ns_of(self, end: str) -> str | None:
        return None if end == HOST else end


@dataclass
class Topology:
    """Places (namespaces, plus the host) and one link between each pair asked for."""

    places: list[str]
    pairs: list[tuple[str, str]]
    token: str = field(default_factory=lambda: secrets.token_hex(2))
    links: dict[frozenset[str], Link] = field(default_factory=dict)
    net: int = field(default_factory=lambda: 100 + secrets.randbelow(150))

    def ns(self, place: str) -> str | None:
        """The namespace of a place (None for the host)."""
        return None if place == HOST else f"{PREFIX}{self.token}{place}"

    def _free_net(self) -> None:
        """Re-pick `net` while the host already has an address in 10.<net>.* (another run's links)."""
        taken = ip("-o", "addr", "show").stdout
        for _ in range(50):  # 150 choices: a few tries find a free one unless dozens of runs share the host
            if f" 10.{self.net}." not in taken:
                return
            self.net = 100 + secrets.randbelow(150)
        raise NetError("no free 10.<net>.0.0/16 for the nemesis's links")

    def open(self) -> Topology:
        self._free_net()
        MARKERS.mkdir(parents=True, exist_ok=True)
        (MARKERS / self.token).write_text(f"{os.getpid()}\n")
        try:
            for place in self.places:
                if place != HOST:
                    ns = self.ns(place)
                    assert ns is not None
                    ip("netns", "add", ns)
                    ip("link", "set", "lo", "up", ns=ns)
            for k, (a, b) in enumerate(self.pairs, start=1):
                self._link(k, a, b)
        except BaseException:
            self.close()
            raise
        return self

    def _link(self, k: int, a: str, b: str) -> None:
        dev_a, dev_b = f"{PREFIX}{self.token}{a}{b}", f"{PREFIX}{self.token}{b}{a}"
        link = Link(a, b, dev_a, dev_b, f"10.{self.net}.{k}.1", f"10.{self.net}.{k}.2")
        ip("link", "add", dev_a, "type", "veth", "peer", "name", dev_b)
        self.links[frozenset((a, b))] = link
        for end, dev, addr in ((a, dev_a, link.addr_a), (b, dev_b, link.addr_b)):
            ns = self.ns(end)
            if ns is not None:
                ip("link", "set", dev, "netns", ns)
            ip("addr", "add", f"{addr}/24", "dev", dev, ns=ns)
            ip("link", "set", dev, "up", ns=ns)

    def link(self, a: str, b: str) -> Link:
        return self.links[frozenset((a, b))]

    def addr(self, place: str, seen_from: str) -> str:
        """The address `seen_from` reaches `place` at (the far end of their link)."""
        link = self.link(place, seen_from)
        return link.addr_a if link.a == place else link.addr_b

    def set_link(self, a: str, b: str, up: bool) -> None:
        """Cut (or restore) the link between a and b, at both ends: nothing passes either way."""
        link = self.link(a, b)
        for end, dev in ((link.a, link.dev_a), (link.b, link.dev_b)):
            ip("link", "set", dev, "up" if up else "down", ns=self.ns(end))
        link.up = up

    def cut(self, groups: list[list[str]]) -> list[tuple[str, str]]:
        """A partition: every link between places of different groups goes down (places in no
        group keep their links). Returns the links cut, for heal()."""
        where = {p: i for i, g in enumerate(groups) for p in g}
        cut = [(lk.a, lk.b) for lk in self.links.values()
               if lk.up and lk.a in where and lk.b in where and where[lk.a] != where[lk.b]]
        for a, b in cut:
            self.set_link(a, b, False)
        return cut

    def shape(self, a: str, b: str, *netem: str) -> None:
        """`tc netem` on both ends of one link (e.g. "delay", "100ms", "50ms", "loss", "5%")."""
        link = self.link(a, b)
        for end, dev in ((link.a, link.dev_a), (link.b, link.dev_b)):
            tc("qdisc", "replace", "dev", dev, "root", "netem", *netem, ns=self.ns(end))
        link.shaped = True

    def heal(self) -> None:
        """Every link up and unshaped."""
        for link in self.links.values():
            if link.shaped:
                for end, dev in ((link.a, link.dev_a), (link.b, link.dev_b)):
                    tc("qdisc", "del", "dev", dev, "root", ns=self.ns(end), check=False)
                link.shaped = False
            if not link.up:
                self.set_link(link.a, link.b, True)

    def exec_prefix(self, place: str) -> list[str]:
        """The argv prefix that runs a program in a place."""
        ns = self.ns(place)
        return [] if ns is None else ["ip", "netns", "exec", ns]

    def close(self) -> None:
        for place in self.places:
            ns = self.ns(place)
            if ns is not None:
                _kill_ns(ns)
        for link in self.links.values():  # the host's ends go with their peers; a half-made one may not
            if HOST in (link.a, link.b):
                ip("link", "del", link.dev_a if link.a == HOST else link.dev_b, check=False)
        (MARKERS / self.token).unlink(missing_ok=True)


def all_pairs(places: list[str]) -> list[tuple[str, str]]:
    return list(itertools.combinations(places, 2))
