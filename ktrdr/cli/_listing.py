"""`ktrdr ops list` itself, with no typer in it: the checks of its options, the read and the table.
The typer command (ktrdr.cli.ops_commands) and the lean path (ktrdr.cli._lean) both call `run_list`,
so both print the same rows and the same error lines."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ktrdr.cli._run import client, echo, op_id_problem, run_coro

if TYPE_CHECKING:  # the fold is imported by the verbs that use it: `ktrdr --help` stays fast
    from ktrdr.ops import OperationView


def age(view: OperationView) -> str:
    if view.created_at is None and view.updated_at is None:
        return "-"
    secs = (datetime.now(UTC) - (view.created_at or view.updated_at)).total_seconds()  # type: ignore[operator]
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs / size:.0f}{unit}"
    return f"{secs:.0f}s"


def tree_order(views: list[OperationView]) -> list[tuple[int, OperationView]]:
    """(depth, view): children right under their parent, in creation order; orphans at the top level."""
    by_id = {v.op_id: v for v in views}
    kids: dict[str, list[OperationView]] = {}
    for v in views:
        if v.parent_op_id and v.parent_op_id in by_id:
            kids.setdefault(v.parent_op_id, []).append(v)
    for siblings in kids.values():  # a workflow's children share its id's time: their creation orders them
        siblings.sort(key=lambda k: (k.created_at is None, k.created_at.timestamp() if k.created_at else 0.0, k.op_id))
    out: list[tuple[int, OperationView]] = []

    def walk(v: OperationView, depth: int) -> None:
        out.append((depth, v))
        for k in kids.get(v.op_id, []):
            walk(k, depth + 1)

    for v in views:
        if not (v.parent_op_id and v.parent_op_id in by_id):
            walk(v, 0)
    return out


def _fail(message: str) -> int:
    echo(f"error: {message}", err=True)
    return 2


def run_list(limit: int = 50, flat: bool = False, status: str | None = None, op_type: str | None = None,
             pool: str | None = None, since: str | None = None, until: str | None = None,
             symbol: str | None = None, parent: str | None = None, text: str | None = None,
             before: str | None = None, json_out: bool = False) -> int:
    """Check the options as given on the command line, list, and return the exit code."""
    from typing import get_args

    from ktrdr.ops.index import MAX_PAGE, Filters, before_key, parse_when
    from ktrdr.ops.search import check_text
    from ktrdr.ops.view import Status

    statuses = get_args(Status)
    if limit < 0 or limit > MAX_PAGE:
        return _fail(f"--limit must be 0 to {MAX_PAGE}, got {limit}")
    if status is not None and status not in statuses:
        return _fail(f"--status must be one of {', '.join(statuses)}, got {status[:40]!r}")
    if parent is not None and (problem := op_id_problem(parent)) is not None:
        return _fail(problem)
    try:
        text = check_text(text) if text is not None else None
        filters = Filters(status=status, op_type=op_type, pool=pool, symbol=symbol, parent=parent, text=text,
                          since=parse_when(since) if since else None, until=parse_when(until) if until else None)
        if before:
            before_key(before)
    except ValueError as exc:
        return _fail(str(exc))
    return run_coro(_ops_list(limit, flat, json_out, filters, before))


def view_json(view: OperationView) -> dict[str, Any]:
    import msgspec

    d = msgspec.to_builtins(view)
    d["elapsed_s"] = view.elapsed_s
    return d


async def _ops_list(limit: int, flat: bool, json_out: bool, filters: Any = None, before: str | None = None) -> int:
    async with client() as c:
        views = await c.list_operations(limit=limit or None, filters=filters, before=before)
        more = c.next_before
        if c.index_note:
            echo(f"note: {c.index_note}", err=True)
    if json_out:
        echo(json.dumps([view_json(v) for v in views], default=str))
        if more:
            echo(f"next page: --before {more}", err=True)
        return 0
    if not views:
        echo("no operations match" if (filters is not None and filters.any) or before
             else "no operations yet (try `ktrdr dummy`)")
        return 0
    rows = [(0, v) for v in views] if flat else tree_order(views)
    w = max(len("OPERATION"), *(len(v.op_id) + 2 * d for d, v in rows))
    lines = [f"{'OPERATION':<{w}} {'STATUS':<10} {'TYPE':<17} {'PRIO':<6} {'PROGRESS':>8} {'AGE':>5}  DESCRIPTION"]
    for depth, v in rows:
        name = "  " * depth + v.op_id
        lines.append(f"{name:<{w}} {v.status:<10} {v.op_type or '-':<17} {v.priority or 'normal':<6} "
                     f"{v.percentage:7.1f}% {age(v):>5}  {v.description or v.error or ''}")
    echo("\n".join(lines))
    if more:
        echo(f"next page: --before {more}", err=True)
    return 0
