"""Intake decisions: whether a command is where it claims to be, what a repeated command means, and
who ends a cancelled operation that is still queued. Pure; the orchestrator acts on the answers.
"""

from __future__ import annotations

from events import subjects
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
