"""The orchestrator's supervisor: who is alive (the ACTORS bucket's updates) and, every beat while
connected, what ktrdr.ops.supervision decides about the live operations, applied through the
orchestrator: a deadline's cancel request, a failed operation, a queued operation's note.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from nats.aio.msg import Msg

from events import subjects
from events.codec import DecodeError, decode_heartbeat
from events.messages import OperationProgress, ProgressState
from ktrdr.ops import supervision, verdicts
from ktrdr.ops.reader import collect_views
from ktrdr.ops.supervision import ClearNote, FailOperation, FireDeadline, Peer, SayQueuedNote
from ktrdr.transport import last_seq

if TYPE_CHECKING:
    from actors.orchestrator import Orchestrator


class Supervisor:
    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch
        s = orch.settings
        self.limits = supervision.Limits(s.heartbeat_s, s.worker_timeout_s, s.orphan_timeout_s)
        self.peers: dict[str, Peer] = {}
        self.since = time.monotonic()  # when it began hearing the others (start, or reconnect + grace)
        self.deaf = False  # disconnected from NATS: silence from workers then says nothing about them

    def claimed(self, op_id: str) -> bool:
        return supervision.claimed(self.peers, op_id)

    async def on_presence(self, msg: Msg) -> None:
        key = subjects.kv_key_of(subjects.ACTORS_BUCKET, msg.subject)
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE") or not msg.data:
            self.peers.pop(key, None)
            return
        with contextlib.suppress(DecodeError):
            hb = decode_heartbeat(msg.data)
            supervision.heard(self.orch.live, self.peers, key, Peer(hb.role, hb.domain, hb.pools, hb.busy,
                                                                    time.monotonic()))

    def connection_lost(self) -> None:
        self.deaf = True

    def connection_back(self) -> None:
        self.deaf = False
        self.since = supervision.reconnect_grace(self.orch.live, self.peers, self.since, time.monotonic())

    async def loop(self) -> None:
        interval = max(min(self.limits.heartbeat_s, 1.0), 0.05)
        last = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if supervision.paused(now - last, interval, self.limits):
                # We did not run (SIGSTOP, a starved machine): what we know of the workers is as old as
                # the gap, so it judges nobody; everyone gets the reconnect grace from now.
                self.orch.log.warning("supervision did not run for %.1f s: the workers' silence is not counted",
                                      now - last)
                self.since = supervision.reconnect_grace(self.orch.live, self.peers, self.since, now)
            last = now
            try:
                await self.supervise()
            except Exception as exc:
                self.orch.log.debug("supervision pass failed: %s", exc)

    async def supervise(self) -> None:
        orch = self.orch
        if orch.leadership is None or not orch.leadership.active:
            return  # a leader whose lease may have passed judges nothing (its view may be stale)
        actions = supervision.decide(
            orch.live, self.peers, now=time.monotonic(), wall=datetime.now(UTC), since=self.since,
            limits=self.limits, workflows=orch.workflows,
            connected=not self.deaf and orch.nc is not None and orch.nc.is_connected)
        supervision.settle(orch.live, self.peers, actions)
        await self.mark_silent()
        for action in actions:
            if isinstance(action, FireDeadline):
                await orch.request_cancel(verdicts.deadline_cancel(action.op_id, action.allowed_s, orch.id))
            elif isinstance(action, FailOperation):
                if not await self.confirmed(action.op_id):
                    continue
                orch.log.warning("%s: %s", action.op_id, action.event.error)
                await orch.finish(action.op_id, action.event)
            elif isinstance(action, SayQueuedNote | ClearNote) and action.op_id in orch.live:
                orch.emit_progress(action.op_id, ProgressState(message=action.text, phase="queued"))

    async def mark_silent(self) -> None:
        """For each running operation whose worker has been silent half its timeout: where its stored
        progress stands now (one read), to compare with when the timeout has passed (confirmed)."""
        orch, now = self.orch, time.monotonic()
        half = self.limits.worker_timeout_s / 2
        for tracked in list(orch.live.values()):
            mark = tracked.progress_mark
            if tracked.view.status == "running" and now - tracked.last_seen > half and (
                    mark is None or mark[1] < tracked.last_seen) and orch.js is not None:
                tracked.progress_mark = (await last_seq(orch.js, subjects.ops(tracked.view.op_id,
                                                                               OperationProgress.name)), now)

    async def confirmed(self, op_id: str) -> bool:
        """Before a verdict on an operation whose worker seems lost or whose pool seems empty: what
        OPS stored of it, read now, agrees. It may have ended or been picked up (events a partition
        or a pause kept from us), or its worker may have stored progress we did not hear: then there
        is no verdict, the view is brought up to date and the worker's clock starts again."""
        orch = self.orch
        tracked = orch.live.get(op_id)
        if tracked is None or orch.js is None:
            return False
        # Through the reader (the holder proof's chain state comes with the view, for what follows)
        stored = (await collect_views(orch.js, subjects.lifecycle_filters(op_id))).views.get(op_id)
        if stored is None:
            return True
        now = time.monotonic()
        if stored.terminal:
            orch.log.info("%s ended while we did not hear it (%s): no verdict of ours", op_id, stored.status)
            tracked.view = stored
            await orch.ended(op_id, tracked)
            return False
        if stored.attempts != tracked.view.attempts or stored.status != tracked.view.status:
            tracked.view, tracked.last_seen, tracked.queued_since = stored, now, now
            return False
        if tracked.view.status != "running":
            return True
        seq = await last_seq(orch.js, subjects.ops(op_id, OperationProgress.name))
        mark = tracked.progress_mark
        if mark is None or mark[1] < tracked.last_seen or mark[0] != seq:
            tracked.progress_mark, tracked.last_seen = (seq, now), now  # alive, unheard: judged again later
            return False
        return True
