"""Presence: each actor's heartbeat in the KV bucket ACTORS (key <role>.<actor_id>, memory storage,
a TTL so a dead actor's record expires). The record lists the operations the actor runs, the pools it
serves and its memory. Each beat also extends the ack deadline and the lease of running work."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
from typing import TYPE_CHECKING

from nats.js.kv import KeyValue

from events import subjects
from events.codec import encode
from events.messages import Heartbeat

if TYPE_CHECKING:
    from actors._actor import Actor

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> tuple[float, float]:
    """(resident memory now, the process's peak) in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    try:
        with open("/proc/self/statm", "rb") as f:
            now = int(f.read().split()[1]) * _PAGE / 2**20
    except (OSError, ValueError, IndexError):
        now = peak
    return round(now, 1), round(peak, 1)


class Presence:
    def __init__(self, actor: Actor, kv: KeyValue) -> None:
        self.actor, self.kv = actor, kv
        self.key = subjects.heartbeat_key(actor.role, actor.id)

    def record(self, stopping: bool = False) -> Heartbeat:
        a = self.actor
        now, peak = rss_mb()
        return Heartbeat(actor=a.id, role=a.role, domain=a.work_domain or "",
                         pools=a.work.pools if a.work is not None else a.served_pools, host=socket.gethostname(),
                         pid=os.getpid(), started=a.started_at, busy=a.busy(), interval_s=a.settings.heartbeat_s,
                         stopping=stopping, rss_mb=now, peak_rss_mb=peak, state=a.presence_state(),
                         metrics_url=a.metrics_url)

    async def beat(self) -> None:
        await self.kv.put(self.key, encode(self.record()))

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.actor.settings.heartbeat_s)
            # Two independent steps: leases and ack deadlines are renewed even when the presence
            # record cannot be written (its bucket being recreated after a server restart, say).
            try:
                await self.beat()
            except Exception as exc:  # server away: the connection reconnects; keep beating
                self.actor.log.debug("heartbeat failed: %s", exc)
            if self.actor.work is not None:
                try:
                    await self.actor.work.on_beat()
                except Exception as exc:
                    self.actor.log.debug("lease renewal pass failed: %s", exc)

    async def leave(self) -> None:
        with contextlib.suppress(Exception):
            await self.kv.delete(self.key)
