"""The orchestrator's intake: each message taken from CMD becomes a created operation, a rejection
with a reason a person can act on, or (a repeat) nothing new. Decoding and validation happen here
(ktrdr.commands, off the event loop for a strategy); ktrdr.ops.intake says what a command that does
not fit, or a repeated one, means.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
from nats.aio.msg import Msg

from actors._orch_leader import CMD_ACK_WAIT_S
from events import subjects
from events.codec import DecodeError, InvalidField, decode_command, sniff_op_id
from events.messages import Command, OperationCreated, OperationRejected, OperationRetried, RunSweep, StartTraining
from ktrdr import commands, tracing
from ktrdr.errors import KtrdrError
from ktrdr.ops import OperationView, fold, intake, verdicts, workflows
from ktrdr.ops.reader import read_view
from ktrdr.transport import last_message

if TYPE_CHECKING:
    from actors.orchestrator import Orchestrator


class CommandIntake:
    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch

    async def recorded(self, op_id: str) -> bool:
        """Whether the operation exists: live or lately ended (memory), else stored in OPS (rejected,
        or created and ended: the orchestrator no longer holds every operation ever seen, issue 20).
        One created and not ended but not in memory is not "recorded": its creation failed midway
        here (e.g. its route, during an election) and was forgotten before its created event's echo
        came back, so it is created again (every publish of create() carries a fixed id: nothing is
        stored twice) and routed, never ignored as a duplicate while it stays queued."""
        if op_id in self.orch.known or op_id in self.orch.live:
            return True
        assert self.orch.js is not None
        created, rejected = await asyncio.gather(*(last_message(self.orch.js, subjects.ops(op_id, name))
                                                   for name in (OperationCreated.name, OperationRejected.name)))
        if rejected is None and created is None:
            return False
        if rejected is None and not (await read_view(self.orch.js, op_id)).terminal:
            return False
        self.orch.known.add(op_id)
        return True

    async def on_command(self, msg: Msg) -> None:
        """Handle one command, telling JetStream it is in progress meanwhile: the consumer's ack wait is
        short (CMD_ACK_WAIT_S), so that a command an orchestrator took and died with goes to the next
        one within seconds, and a long validation must not look like such a death."""
        keep = asyncio.create_task(_in_progress(msg))
        try:
            await self._on_command(msg)
        finally:
            keep.cancel()

    async def _on_command(self, msg: Msg) -> None:
        try:
            cmd = decode_command(msg.data)
        except InvalidField as exc:  # well formed, but a field of the wrong type or out of its bounds
            await self._malformed(msg, sniff_op_id(msg.data), f"malformed command on {msg.subject[:100]}: {exc}",
                                  "validation", exc.field)
            return
        except DecodeError as exc:
            await self._malformed(msg, sniff_op_id(msg.data), f"malformed command on {msg.subject[:100]}: {exc}")
            return
        if (problem := intake.misrouted(msg.subject, cmd)) is not None:
            await self._malformed(msg, cmd.op_id, problem)
            return
        op_id = cmd.op_id
        if await self.recorded(op_id):
            if intake.route_again(self.orch.live_view(op_id), op_id in self.orch.workflows):
                await self.orch.dispatch_again(op_id)
            else:
                self.orch.log.info("duplicate command for %s ignored", op_id)
        elif cmd.parent_op_id is not None:
            await self.reject(op_id, "parent_op_id: only the orchestrator creates child operations", "validation")
        elif cmd.schedule_name is not None:
            await self.reject(op_id, "schedule_name: only a schedule's firing sets it (see `ktrdr schedule`)",
                              "validation", "schedule_name")
        elif cmd.retry_of is not None:
            await self.retry(cmd)
        else:
            await self.validate_and_create(cmd, tracing.of_headers(msg.headers))
        await msg.ack()

    async def validate_and_create(self, cmd: Command, traceparent: str | None = None) -> None:
        try:
            if isinstance(cmd, StartTraining | RunSweep):  # a strategy (or a grid of them) to parse: off the loop
                await asyncio.to_thread(commands.validate, cmd)
            else:  # a few bounded field checks: cheaper inline than a thread hop
                commands.validate(cmd)
        except KtrdrError as exc:
            await self.reject(cmd.op_id, str(exc), exc.code, getattr(exc, "field", None))
            return
        cmd = intake.fix_priority(intake.fix_deadline(cmd, datetime.now(UTC)))  # deadline: on our clock (F13)
        try:
            await self.create(cmd, traceparent)
        except BaseException:
            # Not created as far as we can tell (a publish or a read failed, e.g. during an election):
            # forget it, so that the redelivery this message gets (nak) creates and routes it again
            # rather than being ignored as a duplicate while the operation stays queued with no work
            # item. Every publish of create() carries a fixed Nats-Msg-Id: nothing is stored twice.
            self.orch.live.pop(cmd.op_id, None)
            self.orch.workflows.forget(cmd.op_id)
            raise

    async def retry(self, cmd: Command) -> None:
        """`ktrdr ops retry`: the command stored for `cmd.retry_of` runs again under cmd's id, when
        that operation may be retried (ktrdr.ops.intake.retry_problem); what else the client sent
        is not used, so a retry runs nothing its original did not."""
        assert self.orch.js is not None and cmd.retry_of is not None
        old = await read_view(self.orch.js, cmd.retry_of)
        problem = intake.retry_problem(old)
        again: Command | None = None
        if problem is None:
            try:
                again = intake.retried_command(old, cmd.op_id, datetime.now(UTC), cmd.requested_by)
            except (msgspec.ValidationError, TypeError) as exc:
                problem = f"the command stored for {old.op_id} cannot be read back: {exc}"
        if problem is None and type(again) is not type(cmd):
            problem = f"{old.op_id} is a {old.op_type or old.domain} operation, not {type(cmd).__name__}"
        if problem is not None or again is None:
            await self.reject(cmd.op_id, f"retry_of: {problem}", "validation", "retry_of")
            return
        await self.validate_and_create(again)

    async def _malformed(self, msg: Msg, op_id: str | None, reason: str, code: str = "malformed",
                         field_path: str | None = None) -> None:
        if op_id and subjects.is_op_id(op_id) and not await self.recorded(op_id):
            await self.reject(op_id, reason, code, field_path)
        else:
            self.orch.log.warning("%s (dropped)", reason[:500])
        await msg.term()

    async def reject(self, op_id: str, reason: str, code: str, field_path: str | None = None) -> None:
        self.orch.known.add(op_id)
        await self.orch.publish_event(verdicts.rejected(op_id, reason, code, field_path))

    async def create(self, cmd: Command, traceparent: str | None = None) -> None:
        """Create an operation (validated), then cancel it at once if a cancel was recorded for it
        before it existed, else route it (or start its workflow). `traceparent`: the command's (its
        operation's span is a child of the CLI's; a child operation's, of its parent's)."""
        orch = self.orch
        assert orch.js is not None
        op_id = cmd.op_id
        orch.op_spans.start(cmd.op_id, cmd.domain, cmd.pool, cmd.parent_op_id, traceparent)
        op_type, description = commands.describe(cmd)
        plan: list[Command] = []
        done: dict[str, OperationView] = {}
        if workflows.is_workflow(cmd):
            plan = await asyncio.to_thread(workflows.plan, cmd, commands.training_inputs)
            op_type, description = workflows.describe(cmd, description)
            if cmd.retry_of is not None:  # the steps that completed in the run it retries are not run again
                plan, done = await self.reused(cmd.retry_of, plan)
        tracked = orch._track(OperationView(op_id=op_id))
        # The recorded-cancel read goes beside the creation: a cancel recorded after it is read is
        # handled by on_cancel_request (the operation is live from the line above).
        # `created` carries the operation span's traceparent: a leader that takes over continues it
        with tracing.current(orch.op_spans.spans.get(op_id)):
            _, recorded = await asyncio.gather(
                orch.publish_own(OperationCreated(op_id=op_id, domain=cmd.domain, op_type=op_type, command=cmd,
                                               description=description, parent_op_id=cmd.parent_op_id,
                                               children=[c.op_id for c in plan],
                                               schedule_name=cmd.schedule_name, retry_of=cmd.retry_of)),
                last_message(orch.js, subjects.cancel(op_id)))
        if cmd.retry_of is not None:  # `ops show` of the old one names its retry
            await orch.publish_event(OperationRetried(op_id=cmd.retry_of, retried_by=op_id))
        if recorded is not None and (ev := orch._decoded(subjects.cancel(op_id), recorded)) is not None:
            fold(tracked.view, ev)
        if tracked.view.cancel_requested:
            await orch.finish(op_id, verdicts.recorded_cancel(tracked.view))
        elif not plan:
            await orch._route(cmd)
        else:
            await orch.workflows.start(op_id, plan, done)

    async def reused(self, old_id: str, plan: list[Command]) -> tuple[list[Command], dict[str, OperationView]]:
        """A retried workflow's plan and the children it reuses (ktrdr.ops.workflows.reuse)."""
        assert self.orch.js is not None
        old = await read_view(self.orch.js, old_id)
        views = await asyncio.gather(*(read_view(self.orch.js, c) for c in old.children))
        return workflows.reuse(plan, old.children, {v.op_id: v for v in views})


async def _in_progress(msg: Msg) -> None:
    while True:
        await asyncio.sleep(CMD_ACK_WAIT_S / 3)
        with contextlib.suppress(Exception):
            await msg.in_progress()
