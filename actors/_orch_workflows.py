"""The orchestrator's workflow runner: drives each workflow in flight. ktrdr.ops.workflows decides
every step from the parent's and the children's views; the runner does what it says through the
orchestrator (create children, cancel them, finish the parent) and says the parent's progress, at
most every PARENT_PROGRESS_EVERY_S (the newest state held back goes out when the interval ends).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from events.codec import DecodeError, decode_command, encode
from events.messages import Command, OperationStarted, ProgressState
from ktrdr import commands
from ktrdr.errors import KtrdrError
from ktrdr.ops import OperationView, verdicts, workflows
from ktrdr.ops.workflows import Workflow
from ktrdr.rendering import ProgressRenderer

if TYPE_CHECKING:
    from actors.orchestrator import Orchestrator


class WorkflowRunner:
    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch
        self.flows: dict[str, Workflow] = {}
        self._advancing: set[str] = set()  # a step in progress: what it causes steps it again after it
        self._again: set[str] = set()  # asked to step while stepping (a child it cancelled ended at once)
        self._flushes: dict[str, asyncio.TimerHandle] = {}

    def __contains__(self, op_id: object) -> bool:
        return op_id in self.flows

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.flows))  # a copy: stepping one workflow may end another

    def forget(self, op_id: str) -> None:
        self.flows.pop(op_id, None)

    async def start(self, op_id: str, plan: list[Command], done: dict[str, OperationView] | None = None) -> None:
        """A workflow just created: it runs (the orchestrator holds it) and takes its first step;
        `done`: the children a retried workflow reuses (completed in the run it retries)."""
        self.flows[op_id] = Workflow(plan, children=dict(done or {}), pacing_interval_s=self._pacing_interval())
        await self.orch.publish_own(OperationStarted(op_id=op_id, worker=self.orch.id, message="workflow started"))
        await self.advance(op_id)

    async def load(self, op_id: str, view: OperationView, views: dict[str, OperationView]) -> None:
        """A workflow found in flight on start: the same plan again (child ids derive from the parent's),
        with the children created so far."""
        try:
            cmd = decode_command(encode(view.command))
            plan = await asyncio.to_thread(workflows.plan, cmd, commands.training_inputs)
            done: dict[str, OperationView] = {}
            if cmd.retry_of is not None:  # a retry: the same steps reused as when it was created
                plan, done = await self.orch.intake.reused(cmd.retry_of, plan)
        except (DecodeError, KtrdrError, AssertionError) as exc:
            await self.orch.finish(op_id, verdicts.cannot_resume(op_id, exc))
            return
        wf = self.flows[op_id] = Workflow(plan, children=done, pacing_interval_s=self._pacing_interval())
        wf.children.update({c.op_id: views[c.op_id] for c in wf.plan if c.op_id in views})

    def _pacing_interval(self) -> float:
        return workflows.IB_PACING_INTERVAL_S * self.orch.settings.ib_time_scale

    async def advance(self, op_id: str) -> None:
        wf, parent = self.flows.get(op_id), self.orch.live_view(op_id)
        if wf is None or parent is None:
            return
        if op_id in self._advancing:  # e.g. a queued child this step cancels ends inside the step:
            self._again.add(op_id)  # the step decided on the child still live, so step once more after
            return
        self._advancing.add(op_id)
        self._again.discard(op_id)
        try:
            d = workflows.step(wf, parent, self.orch.live_view)
            for child_op in d.cancel:
                await self.orch.request_cancel(verdicts.parent_cancel(child_op, parent, self.orch.id))
            for cmd in d.create:
                await self.orch.intake.create(cmd)
                workflows.created(wf, cmd.op_id, self.orch.live_view(cmd.op_id))
            if d.finish is not None:
                await self.orch.finish(op_id, d.finish)
            elif d.progress is not None:
                self._parent_progress(op_id, wf, d.progress)
        finally:
            self._advancing.discard(op_id)
        again = op_id in self._again
        self._again.discard(op_id)
        if (d.create or again) and op_id in self.flows:
            await self.advance(op_id)  # a child that ended at once (rejected, cancelled while queued) moves it on

    async def child_moved(self, child: OperationView) -> None:
        wf = self.flows.get(child.parent_op_id or "")
        if wf is None or child.parent_op_id is None:
            return
        # the child's own words, without its percentage (None until it has said something)
        line = ProgressRenderer.for_domain(child.domain).progress_text(child) if child.context is not None else None
        workflows.child_moved(wf, child, line)
        await self.advance(child.parent_op_id)

    def _parent_progress(self, op_id: str, wf: Workflow, progress: ProgressState) -> None:
        say, flush_in = workflows.throttle(wf, progress, time.monotonic())
        if say is not None:
            timer = self._flushes.pop(op_id, None)
            if timer is not None:
                timer.cancel()
            self.orch.emit_progress(op_id, say)
        elif flush_in is not None:
            self._flushes[op_id] = asyncio.get_running_loop().call_later(flush_in, self._flush, op_id)

    def _flush(self, op_id: str) -> None:
        self._flushes.pop(op_id, None)
        wf = self.flows.get(op_id)
        held = workflows.flush(wf, time.monotonic()) if wf is not None else None
        if held is not None and self.orch.live_view(op_id) is not None:
            self.orch.emit_progress(op_id, held)
