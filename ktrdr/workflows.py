"""Workflows: an operation made of child operations, decided from views alone (no NATS here).

A training command is one parent operation. Its plan is derived from the command: one `data` child
per symbol x timeframe the strategy needs (mode `full`, which fetches only what the store lacks),
then one `training` child. Child ids derive from the parent's id, so an orchestrator that restarts
mid-workflow plans the very same children. `advance()` looks at the parent's view and its children's
views and says what to do next: create children, cancel children, report progress, or end the
parent. The orchestrator does it and feeds the resulting events back in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from events import subjects
from events.messages import (
    Command,
    Event,
    LoadData,
    OperationCancelled,
    OperationCompleted,
    OperationFailed,
    ProgressState,
    StartTraining,
    WorkflowContext,
)
from ktrdr.operations import OperationView

DATA_SHARE = 10.0  # percent of the parent's bar given to loading data


def plan_training(cmd: StartTraining, symbols: list[str], timeframes: list[str]) -> list[Command]:
    """The children of a training workflow, in order: data loads, then the training itself."""
    parent = cmd.op_id
    common = {"parent_op_id": parent, "deadline": cmd.deadline, "requested_by": f"workflow {parent}"}
    children: list[Command] = [
        LoadData(op_id=subjects.child_op_id(parent, "data", f"{sym}/{tf}"), symbol=sym, timeframe=tf,
                 mode="local" if cmd.data_mode == "local" else "full",
                 start=cmd.start, end=cmd.end, **common)
        for sym in symbols for tf in timeframes
    ]
    children.append(StartTraining(
        op_id=subjects.child_op_id(parent, "training", "train"), strategy_path=cmd.strategy_path,
        strategy_yaml=cmd.strategy_yaml, symbols=list(cmd.symbols), timeframes=list(cmd.timeframes),
        start=cmd.start, end=cmd.end, epochs=cmd.epochs, pool=cmd.pool, data_mode="none", **common))
    return children


@dataclass
class Decision:
    create: list[Command] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)
    progress: ProgressState | None = None
    finish: Event | None = None


def advance(parent: OperationView, plan: list[Command], children: dict[str, OperationView],
            line_of: dict[str, str], cancels_sent: set[str]) -> Decision:
    """The next step of a workflow. `children` holds the views of the children created so far,
    `line_of` each child's rendered progress line, `cancels_sent` the children already told to stop."""
    d = Decision()
    if parent.terminal:
        return d
    live = [c.op_id for c in plan if c.op_id in children and not children[c.op_id].terminal]
    bad = next((children[c.op_id] for c in plan if c.op_id in children
                and children[c.op_id].status in ("failed", "rejected", "cancelled")), None)
    if parent.cancel_requested or bad is not None:
        d.cancel = [op for op in live if op not in cancels_sent]
        if parent.cancel_requested and not live:
            d.finish = _cancelled(parent, plan, children)
        elif bad is not None and not parent.cancel_requested:
            d.finish = _child_ended(parent, bad)
        return d
    data, training = plan[:-1], plan[-1]
    d.create = [c for c in data if c.op_id not in children]
    data_done = sum(1 for c in data if c.op_id in children and children[c.op_id].status == "completed")
    if data_done == len(data) and training.op_id not in children:
        d.create.append(training)
    trained = children.get(training.op_id)
    if trained is not None and trained.status == "completed":
        d.finish = OperationCompleted(op_id=parent.op_id, result=trained.result or {},
                                      message=f"Workflow completed: {len(plan)} operations")
        return d
    d.progress = _progress(plan, children, line_of)
    return d


def _running_child(plan: list[Command], children: dict[str, OperationView]) -> OperationView | None:
    running = [children[c.op_id] for c in plan if c.op_id in children and not children[c.op_id].terminal]
    return running[-1] if running else None


def _progress(plan: list[Command], children: dict[str, OperationView], line_of: dict[str, str]) -> ProgressState:
    data, training = plan[:-1], plan[-1]
    done = sum(1 for c in plan if c.op_id in children and children[c.op_id].status == "completed")
    current = _running_child(plan, children)
    trained = children.get(training.op_id)
    if trained is not None:
        pct = DATA_SHARE + (100.0 - DATA_SHARE) * trained.percentage / 100.0
        step = "training"
    else:
        partial = sum(children[c.op_id].percentage / 100.0 for c in data if c.op_id in children
                      and not children[c.op_id].terminal)
        data_done = sum(1 for c in data if c.op_id in children and children[c.op_id].status == "completed")
        pct = DATA_SHARE * (data_done + partial) / max(1, len(data))
        step = "data"
    line = line_of.get(current.op_id, "") if current is not None else ""
    return ProgressState(
        percentage=round(min(pct, 99.9), 2), message=line or f"{step}: {done}/{len(plan)} operations done",
        current_step=done, total_steps=len(plan), phase=step,
        context=WorkflowContext(step=step, children_done=done, children_total=len(plan),
                                child_op_id=current.op_id if current is not None else "", child_line=line))


def _label(view: OperationView) -> str:
    return f"{view.op_id} ({view.description})" if view.description else view.op_id


def _child_ended(parent: OperationView, child: OperationView) -> Event:
    if child.status == "cancelled":
        return OperationCancelled(
            op_id=parent.op_id, where=f"child {_label(child)}", reason=child.reason or "a child was cancelled",
            reason_code="user" if child.reason_code in (None, "parent") else child.reason_code,  # type: ignore[arg-type]
            message=f"Workflow cancelled: child {_label(child)} was cancelled"
                    f"{' at ' + child.where if child.where else ''}")
    return OperationFailed(op_id=parent.op_id, error=f"child {_label(child)} {child.status}: {child.error}",
                           error_code=child.error_code or "child_failed", where=f"child {child.op_id}")


def _cancelled(parent: OperationView, plan: list[Command], children: dict[str, OperationView]) -> Event:
    where_child = next((children[c.op_id] for c in reversed(plan) if c.op_id in children
                        and children[c.op_id].status == "cancelled" and children[c.op_id].where), None)
    done = sum(1 for c in plan if c.op_id in children and children[c.op_id].status == "completed")
    if where_child is not None:
        where = f"{where_child.domain} child: {where_child.where}"
    else:
        where = f"{done}/{len(plan)} child operations done"
    return OperationCancelled(
        op_id=parent.op_id, where=where, reason=parent.cancel_reason or "cancel requested",
        reason_code=parent.cancel_reason_code or "user",  # type: ignore[arg-type]
        message=f"Workflow cancelled at {where}")
