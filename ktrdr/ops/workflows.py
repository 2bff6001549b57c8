"""Workflow decisions: an operation made of child operations, decided from views alone (no NATS here).

A training command is one parent operation. Its plan is derived from the command: one `data` child
per symbol x timeframe the strategy needs (mode `full`, which fetches only what the store lacks),
then one `training` child, and with `backtest` one `backtest` child on the held-out test period of
the model the training produced (its command is completed from the training's result when that
child completes: the model's version and the test period's first bar). Child ids derive from the
parent's id, so an orchestrator that restarts mid-workflow plans the very same children.
`advance()` looks at the parent's view and its children's views and says what to do next: create
children, cancel children, report progress, or end the parent. The orchestrator does it and feeds
the resulting events back in. The parent's progress mirrors its running child at most every
PARENT_PROGRESS_EVERY_S (`throttle` and `flush` decide when).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from events import subjects
from events.bounds import (
    DEFAULT_SWEEP_PARALLEL,
    DEFAULT_UNIVERSE_PARALLEL,
    MAX_SWEEP_PARALLEL,
    MAX_UNIVERSE_PARALLEL,
    Timeframe,
)
from events.messages import (
    Command,
    DataContext,
    Event,
    LoadData,
    ProgressState,
    RunBacktest,
    RunSweep,
    StartTraining,
    SweepParam,
    WorkflowContext,
)
from ktrdr.ops import verdicts
from ktrdr.ops.view import OperationView

IB_PACING_INTERVAL_S = 600.0 / 60  # IB: 60 historical requests per 10 minutes (x KTRDR_IB_TIME_SCALE)
DATA_SHARE = 10.0  # percent of the parent's bar given to loading data
BACKTEST_SHARE = 10.0  # percent of the parent's bar given to the backtest of the trained model
PENDING_MODEL = "pending"  # the planned backtest's model until the training child names its version
PARENT_PROGRESS_EVERY_S = 0.2


def is_workflow(cmd: Command) -> bool:
    """A top-level training that needs its data loaded first runs as a workflow; so does a data load
    of two or more symbols (a universe)."""
    if cmd.parent_op_id is not None:
        return False
    if isinstance(cmd, LoadData):
        return is_universe(cmd)
    if isinstance(cmd, RunSweep):
        return True
    return isinstance(cmd, StartTraining) and (cmd.data_mode != "none" or cmd.backtest)


def is_universe(cmd: Command) -> bool:
    return isinstance(cmd, LoadData) and len(cmd.symbols) > 1


def describe(cmd: Command, description: str) -> tuple[str, str]:
    """(op_type, description) of a workflow's parent, from its command's own description."""
    if isinstance(cmd, LoadData):
        return "data_universe", f"load {len(cmd.symbols)} symbols {cmd.timeframe} ({cmd.mode})"
    if isinstance(cmd, RunSweep):
        return "training_sweep", description
    if isinstance(cmd, StartTraining) and cmd.backtest:
        steps = "train, then backtest" if cmd.data_mode == "none" else "load data, train, then backtest"
        return "training_workflow", f"{description} ({steps})"
    return "training_workflow", f"{description} (load data, then train)"


def data_children(parent: str, symbols: list[str], timeframes: list[Timeframe], mode: str,
                  cmd: Command, start: object, end: object, pool: str = "any") -> list[Command]:
    """One data child per symbol x timeframe, ids derived from the parent's: the one child-launch
    code of every workflow that loads data (a training's and a universe's)."""
    by = f"workflow {parent}"
    return [
        LoadData(op_id=subjects.child_op_id(parent, "data", f"{sym}/{tf}"), symbol=sym, timeframe=tf,
                 mode=mode, start=start, end=end, pool=pool,  # type: ignore[arg-type]
                 parent_op_id=parent, deadline=cmd.deadline, requested_by=by, retries=cmd.retries,
                 retry_max_interval_s=cmd.retry_max_interval_s)
        for sym in symbols for tf in timeframes
    ]


def plan(cmd: Command, inputs: Callable[[StartTraining], tuple[list[str], list[Timeframe]]]) -> list[Command]:
    """The plan of a workflow command (`inputs` reads a training's symbols and timeframes). Every child
    takes its parent's priority (a sweep's trainings are low unless the sweep says otherwise)."""
    if isinstance(cmd, LoadData):
        children = plan_universe(cmd)
    elif isinstance(cmd, RunSweep):
        children = plan_sweep(cmd, inputs)
    else:
        assert isinstance(cmd, StartTraining)
        children = plan_training(cmd, *inputs(cmd))
    return [msgspec.structs.replace(c, priority=cmd.priority) for c in children]


def plan_universe(cmd: LoadData) -> list[Command]:
    """The children of a universe: one data load per symbol, in the order given (duplicates once)."""
    return data_children(cmd.op_id, list(dict.fromkeys(cmd.symbols)), [cmd.timeframe], cmd.mode, cmd,
                         cmd.start, cmd.end, cmd.pool)


def plan_training(cmd: StartTraining, symbols: list[str], timeframes: list[Timeframe]) -> list[Command]:
    """The children of a training workflow, in order: data loads (none with data_mode "none"), the
    training itself, then (`backtest`) the backtest of its model, planned with its model pending."""
    parent, by = cmd.op_id, f"workflow {cmd.op_id}"
    children = [] if cmd.data_mode == "none" else data_children(
        parent, symbols, timeframes, "local" if cmd.data_mode == "local" else "full", cmd, cmd.start, cmd.end)
    children.append(StartTraining(
        op_id=subjects.child_op_id(parent, "training", "train"), strategy_path=cmd.strategy_path,
        strategy_yaml=cmd.strategy_yaml, symbols=list(cmd.symbols), timeframes=list(cmd.timeframes),
        start=cmd.start, end=cmd.end, epochs=cmd.epochs, pool=cmd.pool, data_mode="none",
        parent_op_id=parent, deadline=cmd.deadline, requested_by=by, retries=cmd.retries,
        retry_max_interval_s=cmd.retry_max_interval_s))
    if cmd.backtest:
        children.append(RunBacktest(
            op_id=subjects.child_op_id(parent, "backtest", "test"), model=PENDING_MODEL, end=cmd.end,
            parent_op_id=parent, deadline=cmd.deadline, requested_by=by))
    return children


def test_period_backtest(planned: RunBacktest, trained: dict[str, Any] | None) -> RunBacktest | str:
    """The planned backtest completed from its training's result: the model version it saved, on the
    symbols it trained on, from the first bar of the held-out test period (the latest of the symbols'
    test starts, so every symbol is in its own test part) to the training's end; or why it cannot be
    (a result without them: a string). Pure, so an orchestrator restarted after the training
    completed makes the very same command."""
    r = trained or {}
    name = (r.get("artifacts") or {}).get("name")
    per_symbol = (r.get("data_summary") or {}).get("per_symbol") or {}
    firsts = [v.get("test_first") for v in per_symbol.values() if isinstance(v, dict)]
    if not isinstance(name, str) or not firsts or not all(isinstance(f, str) for f in firsts):
        return "the training's result names no saved model or no test period"
    try:
        start = max(datetime.fromisoformat(f) for f in firsts)
    except ValueError as exc:
        return f"the training's result has a bad test period: {exc}"
    return msgspec.structs.replace(planned, model=name, symbols=list(per_symbol), start=start)


def workflow_result(trained: dict[str, Any] | None, tested: OperationView | None) -> dict[str, Any]:
    """The parent's result: the training's, and with a backtest child its result under `backtest`
    (its op id beside the figures)."""
    out = dict(trained or {})
    if tested is not None:
        out["backtest"] = {"op_id": tested.op_id, **(tested.result or {})}
    return out


@dataclass
class Workflow:
    """A workflow in flight: its plan, the views of the children created so far, each child's last
    rendered line, the cancels sent, and the state of the parent's throttled progress."""

    plan: list[Command]
    children: dict[str, OperationView] = field(default_factory=dict)
    lines: dict[str, str] = field(default_factory=dict)
    cancels_sent: set[str] = field(default_factory=set)
    said: tuple[float, str] = (-1.0, "")  # (percentage, message) of the parent's last progress
    last_emit: float = float("-inf")  # monotonic
    last_step: str = ""
    held: ProgressState | None = None  # the newest progress not yet said (throttled)
    flush_pending: bool = False  # a flush of `held` is due (the caller holds the timer)
    pacing_interval_s: float = IB_PACING_INTERVAL_S  # a universe's ETA: seconds per IB request at the bound


@dataclass
class Decision:
    create: list[Command] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)
    progress: ProgressState | None = None
    finish: Event | None = None


def advance(parent: OperationView, plan: list[Command], children: dict[str, OperationView],
            line_of: dict[str, str], cancels_sent: set[str],
            pacing_interval_s: float = IB_PACING_INTERVAL_S) -> Decision:
    """The next step of a workflow. `children` holds the views of the children created so far,
    `line_of` each child's rendered progress line, `cancels_sent` the children already told to stop."""
    d = Decision()
    if parent.terminal:
        return d
    if parent.domain == "data":
        return advance_universe(parent, plan, children, line_of, cancels_sent, pacing_interval_s)
    if (parent.command or {}).get("type") == RunSweep.__name__:
        return advance_sweep(parent, plan, children, line_of, cancels_sent)
    live = [c.op_id for c in plan if c.op_id in children and not children[c.op_id].terminal]
    bad = next((children[c.op_id] for c in plan if c.op_id in children
                and children[c.op_id].status in ("failed", "rejected", "cancelled")), None)
    if parent.cancel_requested or bad is not None:
        d.cancel = [op for op in live if op not in cancels_sent]
        if parent.cancel_requested and not live:
            d.finish = _cancelled(parent, plan, children)
        elif bad is not None and not parent.cancel_requested:
            d.finish = verdicts.child_ended(parent, bad)
        return d
    data, training, tested = _parts(plan)
    d.create = [c for c in data if c.op_id not in children]
    data_done = sum(1 for c in data if c.op_id in children and children[c.op_id].status == "completed")
    if data_done == len(data) and training.op_id not in children:
        d.create.append(training)
    trained = children.get(training.op_id)
    if trained is not None and trained.status == "completed":
        if tested is None:
            d.finish = verdicts.workflow_completed(parent.op_id, trained.result, len(plan))
            return d
        bt = children.get(tested.op_id)
        if bt is None:
            made = test_period_backtest(tested, trained.result)
            if isinstance(made, str):
                d.finish = verdicts.failed(parent.op_id, f"cannot backtest the trained model: {made}", "internal")
                return d
            d.create.append(made)
        elif bt.status == "completed":
            d.finish = verdicts.workflow_completed(parent.op_id, workflow_result(trained.result, bt), len(plan))
            return d
    d.progress = _progress(plan, children, line_of)
    return d


def _running_child(plan: list[Command], children: dict[str, OperationView]) -> OperationView | None:
    running = [children[c.op_id] for c in plan if c.op_id in children and not children[c.op_id].terminal]
    return running[-1] if running else None


def _parts(plan: list[Command]) -> tuple[list[Command], Command, Command | None]:
    """A training workflow's plan: (its data children, its training, its backtest or None)."""
    data = [c for c in plan if isinstance(c, LoadData)]
    training = next(c for c in plan if isinstance(c, StartTraining))
    return data, training, next((c for c in plan if isinstance(c, RunBacktest)), None)


def _progress(plan: list[Command], children: dict[str, OperationView], line_of: dict[str, str]) -> ProgressState:
    data, training, tested = _parts(plan)
    done = sum(1 for c in plan if c.op_id in children and children[c.op_id].status == "completed")
    current = _running_child(plan, children)
    trained = children.get(training.op_id)
    backtested = children.get(tested.op_id) if tested is not None else None
    first = DATA_SHARE if data else 0.0
    last = BACKTEST_SHARE if tested is not None else 0.0
    if backtested is not None:
        pct = 100.0 - last + last * backtested.percentage / 100.0
        step = "backtest"
    elif trained is not None:
        pct = first + (100.0 - first - last) * trained.percentage / 100.0
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


def _cancelled(parent: OperationView, plan: list[Command], children: dict[str, OperationView]) -> Event:
    where_child = next((children[c.op_id] for c in reversed(plan) if c.op_id in children
                        and children[c.op_id].status == "cancelled" and children[c.op_id].where), None)
    done = sum(1 for c in plan if c.op_id in children and children[c.op_id].status == "completed")
    if where_child is not None:
        where = f"{where_child.domain} child: {where_child.where}"
    else:
        where = f"{done}/{len(plan)} child operations done"
    return verdicts.workflow_cancelled(parent, where)


# ------------------------------------------------------------------------- the workflow runner's steps
def step(wf: Workflow, parent: OperationView, live_view: Callable[[str], OperationView | None]) -> Decision:
    """The next step of a workflow in flight: its children's current views (`live_view` gives the
    view of a child still live, None for one that ended), then advance(); the cancels it decides
    are counted as sent."""
    for op_id in list(wf.children):
        current = live_view(op_id)
        if current is not None:
            wf.children[op_id] = current
    d = advance(parent, wf.plan, wf.children, wf.lines, wf.cancels_sent, wf.pacing_interval_s)
    wf.cancels_sent.update(d.cancel)
    return d


def created(wf: Workflow, op_id: str, view: OperationView | None) -> None:
    """A child was just created: follow its live view (one that already ended was recorded when it
    ended, and stays)."""
    if view is not None:
        wf.children[op_id] = view
    else:
        wf.children.setdefault(op_id, OperationView(op_id=op_id, status="queued"))


def child_moved(wf: Workflow, child: OperationView, line: str | None) -> None:
    """A child's view changed; `line` is its rendered progress (None: it has said nothing yet)."""
    wf.children[child.op_id] = child
    if line is not None:
        wf.lines[child.op_id] = line


def throttle(wf: Workflow, progress: ProgressState, now: float) -> tuple[ProgressState | None, float | None]:
    """Whether the parent says `progress` now: (progress to say now, None) when the interval since
    the last one passed or the step changed; else (None, seconds until a flush is due) when a flush
    must be scheduled, or (None, None) when one already is (it will say the newest, held here)."""
    if (progress.percentage, progress.message) == wf.said:
        return None, None
    if now - wf.last_emit >= PARENT_PROGRESS_EVERY_S or progress.phase != wf.last_step:
        wf.held, wf.flush_pending = None, False
        wf.said, wf.last_emit, wf.last_step = (progress.percentage, progress.message), now, progress.phase
        return progress, None
    wf.held = progress
    if wf.flush_pending:
        return None, None
    wf.flush_pending = True
    return None, max(PARENT_PROGRESS_EVERY_S - (now - wf.last_emit), 0.0)


def flush(wf: Workflow, now: float) -> ProgressState | None:
    """The flush is due: the progress held back, to say now (None when nothing is held)."""
    wf.flush_pending = False
    held, wf.held = wf.held, None
    if held is not None:
        wf.said, wf.last_emit = (held.percentage, held.message), now
    return held


def _max_parallel(parent: OperationView, default: int, maximum: int) -> int:
    """The parent command's max_parallel, or `default` where it is missing or outside 1..`maximum`."""
    k = (parent.command or {}).get("max_parallel", default)
    return k if isinstance(k, int) and 1 <= k <= maximum else default


def _cancelling(parent: OperationView, plan: list[Command], children: dict[str, OperationView],
                live: list[str], cancels_sent: set[str]) -> Decision:
    """A cancelled parent with children created at most `max_parallel` at a time: cancel the live ones
    not yet told, create none, and end as cancelled once none is live."""
    d = Decision()
    d.cancel = [op for op in live if op not in cancels_sent]
    if not live:
        d.finish = _cancelled(parent, plan, children)
    return d


# ----------------------------------------------------------------------------------------- universe
def advance_universe(parent: OperationView, plan: list[Command], children: dict[str, OperationView],
                     line_of: dict[str, str], cancels_sent: set[str],
                     pacing_interval_s: float = IB_PACING_INTERVAL_S) -> Decision:
    """A universe's next step. At most `max_parallel` children run; the others wait here, not created
    (a cancel of the parent reaches them by never creating them). A failed symbol is recorded and the
    others go on; the verdict is `completed` listing the failed symbols in its result
    (`failed: {symbol: error}`), and `failed` only when every symbol failed."""
    k = _max_parallel(parent, DEFAULT_UNIVERSE_PARALLEL, MAX_UNIVERSE_PARALLEL)
    live = [c.op_id for c in plan if c.op_id in children and not children[c.op_id].terminal]
    if parent.cancel_requested:
        return _cancelling(parent, plan, children, live, cancels_sent)
    d = Decision()
    free = k - len(live)
    waiting = [c for c in plan if c.op_id not in children]
    d.create = waiting[:max(free, 0)]
    if not waiting and not live:
        d.finish = universe_verdict(parent.op_id, plan, children)
        return d
    d.progress = universe_progress(plan, children, line_of, len(waiting) - len(d.create), pacing_interval_s)
    return d


def _symbol(c: Command) -> str:
    assert isinstance(c, LoadData)
    return c.symbol


def _bars(view: OperationView) -> int:
    r = view.result or {}
    v = r.get("bars_total", 0)
    return v if isinstance(v, int) else 0


def universe_verdict(parent_id: str, plan: list[Command], children: dict[str, OperationView]) -> Event:
    done = [c for c in plan if children[c.op_id].status == "completed"]
    failed = {_symbol(c): f"{children[c.op_id].status}: {children[c.op_id].error or children[c.op_id].reason or ''}"
              for c in plan if children[c.op_id].status != "completed"}
    bars = sum(_bars(children[c.op_id]) for c in done)
    result = {"symbols": len(plan), "completed": [_symbol(c) for c in done], "failed": failed, "bars": bars}
    if not done:
        why = "; ".join(f"{sym} {err}" for sym, err in failed.items())
        return verdicts.failed(parent_id, f"every symbol failed: {why}"[:1000], "child_failed")
    msg = f"Universe completed: {len(done)}/{len(plan)} symbols, {len(failed)} failed"
    return verdicts.completed(parent_id, result, msg + (f" ({', '.join(list(failed)[:10])})" if failed else ""))


def requests_left(plan: list[Command], children: dict[str, OperationView]) -> int:
    """IB requests a universe still has to make: each running child's segments not done, and for each
    child not yet started the mean segment count of those that planned theirs (0 before any did)."""
    planned = [children[c.op_id].context for c in plan if c.op_id in children]
    counts = [ctx.segment_count for ctx in planned if isinstance(ctx, DataContext) and ctx.segment_count]
    mean = sum(counts) / len(counts) if counts else 0.0
    left = 0.0
    for c in plan:
        v = children.get(c.op_id)
        if v is None or (not v.terminal and not (isinstance(v.context, DataContext) and v.context.segment_count)):
            left += mean
        elif not v.terminal and isinstance(v.context, DataContext):
            left += max(0, v.context.segment_count - v.context.segments_done)
    return round(left)


def universe_progress(plan: list[Command], children: dict[str, OperationView], line_of: dict[str, str],
                      queued: int, pacing_interval_s: float = IB_PACING_INTERVAL_S) -> ProgressState:
    ended = [c for c in plan if c.op_id in children and children[c.op_id].terminal]
    failed = sum(1 for c in ended if children[c.op_id].status != "completed")
    running = [children[c.op_id] for c in plan if c.op_id in children and not children[c.op_id].terminal]
    partial = sum(v.percentage / 100.0 for v in running)
    bars = sum(_bars(children[c.op_id]) for c in ended)
    pct = 100.0 * (len(ended) + partial) / max(1, len(plan))
    current = running[-1] if running else None
    line = line_of.get(current.op_id, "") if current is not None else ""
    msg = (f"{len(ended)}/{len(plan)} symbols done ({failed} failed), {len(running)} loading, {queued} queued,"
           f" {bars} bars")
    left = requests_left(plan, children)
    if left:
        msg += f", ETA {left * pacing_interval_s:.0f} s at IB's pacing bound ({left} requests left)"
    return ProgressState(
        percentage=round(min(pct, 99.9), 2), message=msg, current_step=len(ended), total_steps=len(plan),
        phase="data",
        context=WorkflowContext(step="data", children_done=len(ended), children_total=len(plan),
                                child_op_id=current.op_id if current is not None else "", child_line=line))


# -------------------------------------------------------------------------------------------- sweep
def plan_sweep(cmd: RunSweep, inputs: Callable[[StartTraining], tuple[list[str], list[Timeframe]]]) -> list[Command]:
    """The children of a sweep, in order: the data loads once for all variants (none with data_mode
    "none"), one training per variant (key `v<index>`, its strategy text the variant's), then with
    `backtest` one backtest per variant, planned with its model pending. Every path and variant is
    checked here (ktrdr.commands.sweep_variants): a restarted orchestrator plans the very same."""
    from ktrdr.commands import sweep_variants, variant_training

    variants = sweep_variants(cmd)
    parent, by = cmd.op_id, f"workflow {cmd.op_id}"
    symbols, timeframes = inputs(variant_training(cmd, variants[0].strategy_yaml, parent))
    children: list[Command] = [] if cmd.data_mode == "none" else data_children(
        parent, symbols, timeframes, "local" if cmd.data_mode == "local" else "full", cmd, cmd.start, cmd.end)
    children += [variant_training(cmd, v.strategy_yaml, subjects.child_op_id(parent, "training", f"v{v.index}"),
                                  parent) for v in variants]
    if cmd.backtest:
        children += [RunBacktest(op_id=subjects.child_op_id(parent, "backtest", f"v{v.index}"), model=PENDING_MODEL,
                                 end=cmd.end, parent_op_id=parent, deadline=cmd.deadline, requested_by=by)
                     for v in variants]
    return children


def _sweep_parts(plan: list[Command]) -> tuple[list[Command], list[Command], list[Command]]:
    """A sweep's plan: (its data children, its trainings by variant, its backtests by variant or [])."""
    return ([c for c in plan if isinstance(c, LoadData)], [c for c in plan if isinstance(c, StartTraining)],
            [c for c in plan if isinstance(c, RunBacktest)])


def _number(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


RANK_DESCENDING = frozenset({"test_accuracy", "sharpe"})  # higher is better; val_loss: lower is


def leaderboard(parent: OperationView, plan: list[Command], children: dict[str, OperationView]) -> dict[str, Any]:
    """The sweep's result: one row per variant (its index, params, status, metrics, model, child ids,
    error), completed variants sorted by `rank_by` (best first; ties and variants without the metric
    by index), the others after them by index."""
    from ktrdr.training.sweep import grid

    cmd = parent.command or {}
    params = msgspec.convert(cmd.get("params") or [], list[SweepParam])
    values = grid(params)
    rank_by = cmd.get("rank_by") or "val_loss"
    _, trains, tests = _sweep_parts(plan)
    rows: list[dict[str, Any]] = []
    for i, t in enumerate(trains):
        tv, bt = children.get(t.op_id), (children.get(tests[i].op_id) if tests else None)
        r = (tv.result if tv is not None else None) or {}
        row: dict[str, Any] = {
            "variant": i, "params": values[i] if i < len(values) else {}, "op_id": t.op_id,
            "status": tv.status if tv is not None else "not started",
            "val_loss": _number((r.get("validation_metrics") or {}).get("val_loss")),
            "test_accuracy": _number((r.get("test_metrics") or {}).get("test_accuracy")),
            "model": (r.get("artifacts") or {}).get("name"), "error": None}
        if tv is not None and tv.status != "completed":
            row["error"] = tv.error or tv.reason or tv.status
        if tests:
            br = (bt.result if bt is not None else None) or {}
            figures = br.get("strategy") or {}
            row |= {"backtest_op_id": tests[i].op_id, "sharpe": _number(figures.get("sharpe")),
                    "total_return": _number(figures.get("total_return"))}
            if row["status"] == "completed":
                if bt is None:
                    made = test_period_backtest(tests[i], r)  # type: ignore[arg-type]
                    if isinstance(made, str):
                        row["status"], row["error"] = "failed", f"cannot backtest the trained model: {made}"
                elif bt.status != "completed":
                    row["status"], row["error"] = bt.status, f"backtest {bt.status}: {bt.error or bt.reason or ''}"
        rows.append(row)
    sign = -1.0 if rank_by in RANK_DESCENDING else 1.0

    def key(row: dict[str, Any]) -> tuple[int, float, int]:
        m = row.get(rank_by)
        done = row["status"] == "completed"
        return (0 if done and m is not None else 1 if done else 2, sign * m if done and m is not None else 0.0,
                row["variant"])

    rows.sort(key=key)
    done = [r for r in rows if r["status"] == "completed"]
    return {"variants": len(rows), "completed": len(done), "failed": len(rows) - len(done), "rank_by": rank_by,
            "best": done[0] if done else None, "leaderboard": rows}


def advance_sweep(parent: OperationView, plan: list[Command], children: dict[str, OperationView],
                  line_of: dict[str, str], cancels_sent: set[str]) -> Decision:
    """A sweep's next step. The data children first, all at once (one failing fails the sweep: no
    variant could train); then the trainings, at most `max_parallel` running (the others wait here,
    not created, so a cancel of the sweep reaches them by never creating them); with backtests, each
    trained model's backtest as soon as its training completed (not counted in `max_parallel`: the
    backtesters' own pool bounds them). A failed or cancelled variant is a row of the leaderboard;
    the sweep completes once every variant ended, and fails only when none completed."""
    k = _max_parallel(parent, DEFAULT_SWEEP_PARALLEL, MAX_SWEEP_PARALLEL)
    live = [c.op_id for c in plan if c.op_id in children and not children[c.op_id].terminal]
    if parent.cancel_requested:
        return _cancelling(parent, plan, children, live, cancels_sent)
    d = Decision()
    data, trains, tests = _sweep_parts(plan)
    bad = next((children[c.op_id] for c in data if c.op_id in children
                and children[c.op_id].status in ("failed", "rejected", "cancelled")), None)
    if bad is not None:
        d.cancel = [op for op in live if op not in cancels_sent]
        d.finish = verdicts.child_ended(parent, bad)
        return d
    d.create = [c for c in data if c.op_id not in children]
    if any(c.op_id not in children or children[c.op_id].status != "completed" for c in data):
        d.progress = _sweep_progress(plan, children, line_of, k)
        return d
    running = sum(1 for c in trains if c.op_id in children and not children[c.op_id].terminal)
    waiting = [c for c in trains if c.op_id not in children]
    d.create += waiting[:max(k - running, 0)]
    pending_tests = False
    for i, t in enumerate(tests):
        trained = children.get(trains[i].op_id)
        if trained is None or trained.status != "completed":
            continue
        if t.op_id not in children:
            made = test_period_backtest(t, trained.result)
            if isinstance(made, RunBacktest):
                d.create.append(made)
                pending_tests = True
        elif not children[t.op_id].terminal:
            pending_tests = True
    if not d.create and not live and not pending_tests and not waiting:
        board = leaderboard(parent, plan, children)
        if not board["completed"]:
            why = "; ".join(f"variant {r['variant']} {r['status']}: {r['error'] or ''}" for r in board["leaderboard"])
            d.finish = verdicts.failed(parent.op_id, f"every variant failed: {why}"[:1000], "child_failed")
        else:
            best = board["best"]
            metric = best.get(board["rank_by"])
            shown = f"{metric:.4g}" if isinstance(metric, float) else "-"
            d.finish = verdicts.completed(
                parent.op_id, board, f"Sweep completed: {board['completed']}/{board['variants']} variants "
                f"({board['failed']} failed); best variant {best['variant']} {board['rank_by']} {shown}")
        return d
    d.progress = _sweep_progress(plan, children, line_of, k)
    return d


def _sweep_progress(plan: list[Command], children: dict[str, OperationView], line_of: dict[str, str],
                    k: int) -> ProgressState:
    data, trains, tests = _sweep_parts(plan)
    first = DATA_SHARE if data else 0.0
    if any(c.op_id not in children or children[c.op_id].status != "completed" for c in data):
        partial = sum(children[c.op_id].percentage / 100.0 for c in data if c.op_id in children
                      and not children[c.op_id].terminal)
        done_data = sum(1 for c in data if c.op_id in children and children[c.op_id].status == "completed")
        pct, step = DATA_SHARE * (done_data + partial) / max(1, len(data)), "data"
    else:
        share = (1.0 - BACKTEST_SHARE / 100.0) if tests else 1.0
        per = 0.0
        for i, t in enumerate(trains):
            tv = children.get(t.op_id)
            if tv is None:
                continue
            per += share * (1.0 if tv.terminal else tv.percentage / 100.0)
            if tests:
                bt = children.get(tests[i].op_id)
                if (tv.terminal and tv.status != "completed") or (bt is not None and bt.terminal):
                    per += 1.0 - share
                elif bt is not None:
                    per += (1.0 - share) * bt.percentage / 100.0
        pct, step = first + (100.0 - first) * per / max(1, len(trains)), "training"
    ended = [c for c in trains if c.op_id in children and children[c.op_id].terminal]
    failed = sum(1 for c in ended if children[c.op_id].status != "completed")
    running = [children[c.op_id] for c in plan if c.op_id in children and not children[c.op_id].terminal]
    queued = sum(1 for c in trains if c.op_id not in children)
    current = running[-1] if running else None
    line = line_of.get(current.op_id, "") if current is not None else ""
    training_now = sum(1 for c in trains if c.op_id in children and not children[c.op_id].terminal)
    msg = (f"{len(ended)}/{len(trains)} variants trained ({failed} failed), {training_now} training "
           f"(at most {k}), {queued} queued" if step == "training" else
           f"loading data for {len(trains)} variants")
    if tests and step == "training":
        msg += f", {sum(1 for c in tests if c.op_id in children and children[c.op_id].terminal)} backtested"
    done = sum(1 for c in plan if c.op_id in children and children[c.op_id].status == "completed")
    return ProgressState(
        percentage=round(min(pct, 99.9), 2), message=msg, current_step=len(ended), total_steps=len(trains),
        phase=step,
        context=WorkflowContext(step=step, children_done=done, children_total=len(plan),
                                child_op_id=current.op_id if current is not None else "", child_line=line))


# ------------------------------------------------------------------------- a retried workflow
def reuse(plan: list[Command], old_children: list[str], views: dict[str, OperationView]
          ) -> tuple[list[Command], dict[str, OperationView]]:
    """A retried workflow's plan (`ktrdr ops retry`): step i of the new plan is step i of the old
    one (`old_children`, the ids its created event named, in plan order: the same command plans the
    same steps). A step that completed there is that very child (its result reused, nothing
    re-run: returned among the children already done); a training that failed or was cancelled is
    planned anew with `retry_of` its old child, so it resumes from that child's checkpoint; every
    other step runs again. A plan of another length (the strategy's inputs changed) reuses nothing."""
    if len(old_children) != len(plan):
        return plan, {}
    out: list[Command] = []
    done: dict[str, OperationView] = {}
    for c, old_id in zip(plan, old_children, strict=True):
        old = views.get(old_id)
        if old is not None and old.status == "completed" and old.domain == c.domain:
            out.append(msgspec.structs.replace(c, op_id=old_id))
            done[old_id] = old
        elif old is not None and old.status in ("failed", "cancelled") and isinstance(c, StartTraining):
            out.append(msgspec.structs.replace(c, retry_of=old_id))
        else:
            out.append(c)
    return out, done
