"""Intake decisions: whether a command is where it claims to be, what a repeated command means, when
its deadline is, and who ends a cancelled operation that is still queued. Pure; the orchestrator acts
on the answers.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

from events import subjects
from events.bounds import DEFAULT_PRIORITY, PRIORITIES
from events.messages import Command
from ktrdr.commands import short
from ktrdr.ops.view import OperationView


def misrouted(subject: str, cmd: Command) -> str | None:
    """Why a decoded command cannot be taken as it is (its type, subject and op id disagree), or None."""
    op_id = cmd.op_id
    if subjects.command_for_subject(subject) is type(cmd) and subjects.is_op_id(op_id) \
            and subjects.domain_of(op_id) == cmd.domain:
        return None
    return (f"command {type(cmd).__name__} on {subject[:100]} with op_id {short(op_id)}: expected subject "
            f"{subjects.command(cmd)} and an op_id like {subjects.new_op_id(cmd.domain)}")


def route_again(view: OperationView | None, is_workflow: bool) -> bool:
    """A command for an operation that exists already is a duplicate; while that operation is still
    queued, its work item is published again: it may never have been routed (a route that failed
    midway, then the created event tracked it again), and the item's fixed id dedupes."""
    return view is not None and view.status == "queued" and view.command is not None and not is_workflow


def cancel_while_queued(view: OperationView, claimed: bool) -> bool:
    """Whether a cancelled operation (not a workflow: its runner ends those) is ended by the
    orchestrator: nobody works on it yet (a worker that picks it up later drops it); a claimed one is
    ended by its worker."""
    return view.status == "queued" and not claimed


def between_attempts(view: OperationView) -> bool:
    """Whether the operation may be between two attempts: it started, and has not ended. Whether it
    is (its worker handed its lease back: a retry's wait, a worker stopping) is the lease's to say
    (actors/_orch_leases.py: unheld_cancel); then nobody runs it and a cancel is the orchestrator's
    to record."""
    return view.status == "running"


def fix_deadline(cmd: Command, now: datetime) -> Command:
    """The command as the orchestrator accepts it at `now` (its own clock): a deadline is a duration
    (`timeout_s`) and becomes `now + timeout_s`, so a client whose clock is off moves nothing (issue
    18, F13). An older client's absolute `deadline` is converted to the duration it meant (its
    deadline - its ts: both on its clock, so the skew cancels out); when both are given, `timeout_s`
    wins. A command without either is returned as it is."""
    timeout_s = cmd.timeout_s
    if timeout_s is None and cmd.deadline is not None:
        timeout_s = (cmd.deadline - cmd.ts).total_seconds()
    if timeout_s is None:
        return cmd
    return msgspec.structs.replace(cmd, timeout_s=timeout_s, deadline=now + timedelta(seconds=timeout_s))


def fix_priority(cmd: Command) -> Command:
    """The command with its priority fixed (issue 22, item 4): the one it names, else its kind's
    default: low for a sweep and for a schedule's firing (work nobody waits at a terminal for), normal
    for everything else. Fixed once, here, so the created event, the work item's subject, a
    workflow's children and `ops show` all say the same."""
    if cmd.priority is not None:
        return cmd
    default = "low" if cmd.workflow_only or cmd.schedule_name is not None else DEFAULT_PRIORITY
    return msgspec.structs.replace(cmd, priority=default)


def priority_of(command: Command | dict[str, object] | None) -> str:
    """The priority an operation runs at, from its command (a Struct, or as a view stores it); an
    operation created before priorities existed was normal."""
    value = command.get("priority") if isinstance(command, dict) else getattr(command, "priority", None)
    return value if isinstance(value, str) and value in PRIORITIES else DEFAULT_PRIORITY


# ------------------------------------------------------------------------- ktrdr ops retry
RETRYABLE_STATUSES = ("failed", "cancelled")


def unfinished_sweep(view: OperationView) -> bool:
    """A sweep that completed with variants that did not (it completes once one variant did): its
    retry runs those variants only."""
    result = view.result or {}
    return view.status == "completed" and isinstance(result.get("leaderboard"), list) \
        and isinstance(result.get("failed"), int) and result["failed"] > 0


def retry_problem(old: OperationView) -> str | None:
    """Why the operation `old` (its stored view) cannot be retried, or None: only a top-level
    operation that failed or was cancelled (or a sweep with variants that did not complete), once
    (retry its retry after that)."""
    if old.command is None or old.status == "unknown":
        return f"no operation {old.op_id} is stored"
    if old.parent_op_id:
        return f"{old.op_id} is a step of {old.parent_op_id}: retry {old.parent_op_id}"
    if old.status not in RETRYABLE_STATUSES and not unfinished_sweep(old):
        what = "is still running" if not old.terminal else f"{old.status}"
        return f"{old.op_id} {what}: only a failed or cancelled operation (or a sweep with unfinished variants) " \
               "can be retried"
    if old.retried_by:
        return f"{old.op_id} was retried already, by {old.retried_by}: retry that one"
    return None


def retried_command(old: OperationView, op_id: str, now: datetime, requested_by: str | None = None) -> Command:
    """The command a retry of `old` runs under `op_id`: the one stored in its created event, as it
    was accepted, with a fresh deadline of the same duration (fix_deadline sets it again) and
    `retry_of`; what it was started by (a schedule, a person) is not carried over."""
    from events.messages import AnyCommand

    stored = msgspec.convert(old.command, AnyCommand)  # type: ignore[call-overload]
    changes: dict[str, object] = {"op_id": op_id, "ts": now, "deadline": None, "retry_of": old.op_id,
                                  "schedule_name": None, "parent_op_id": None}
    if requested_by is not None:
        changes["requested_by"] = requested_by
    return msgspec.structs.replace(stored, **changes)  # type: ignore[no-any-return]
