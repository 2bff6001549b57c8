"""What the page shows, as JSON: one row per operation (the `ops list` columns plus the renderer's
line), one row per event, and the state of one operation's page (`OpPage`: the fold, the last N
events, the per-epoch metrics). The wording comes from ktrdr.rendering, so the page says what the CLI
says.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime
from typing import Any

from events.messages import AnyEvent
from ktrdr.ops import OperationView, fold
from ktrdr.ops.index import view_domain
from ktrdr.plotting import epoch_metrics
from ktrdr.rendering import ProgressRenderer

# A training reports one point per epoch; more than this is not a curve anyone reads in a browser.
MAX_CURVE_POINTS = 5000


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def sort_key(op_id: str) -> str:
    """The time token of an operation id: ids sort by domain first, the list wants newest first."""
    parts = op_id.split("-")
    return parts[1] if len(parts) == 3 else ""


def row_json(view: OperationView) -> dict[str, Any]:
    """One line of the operations list (the `ktrdr ops list` columns, plus the rendered line)."""
    renderer = ProgressRenderer.for_domain(view_domain(view))
    return {
        "op_id": view.op_id,
        "status": view.status,
        "type": view.op_type or "-",
        "domain": view_domain(view),
        "percentage": round(view.percentage, 1),
        "created": _iso(view.created_at or view.updated_at),
        "description": view.description or view.error or "",
        # (a row made from its index summary carries the line rendered from the full view)
        "line": getattr(view, "line", None) or renderer.line(view),
        # Parent/child workflows: the field arrives with the lead's workflow change; flat until then.
        "parent_op_id": getattr(view, "parent_op_id", None),
        "sort": sort_key(view.op_id),
    }


def view_json(view: OperationView) -> dict[str, Any]:
    """The header of an operation's page."""
    d = row_json(view)
    d.update({
        "started": _iso(view.started_at), "finished": _iso(view.finished_at), "elapsed_s": view.elapsed_s,
        "terminal": view.terminal, "where": view.where, "error": view.error, "worker": view.worker,
        "attempts": view.attempts, "cancel_requested": view.cancel_requested, "message": view.message,
        "phase": view.phase, "child_count": len(view.children),
    })
    return d


def timeline_row(view: OperationView) -> dict[str, Any]:
    """One bar of a workflow's timeline: a child from its start (or creation) to its end (or now)."""
    return {"op_id": view.op_id, "type": view.op_type or "-", "status": view.status,
            "created": _iso(view.created_at), "started": _iso(view.started_at), "finished": _iso(view.finished_at),
            "line": getattr(view, "line", None) or ProgressRenderer.for_domain(view_domain(view)).line(view)}


def event_detail(ev: AnyEvent) -> str:
    """The detail column: the same choice as `ktrdr ops tail`, then the reason for the events that
    carry one (a cancel request, a rejection)."""
    return (getattr(getattr(ev, "progress", None), "message", "") or getattr(ev, "error", "")
            or getattr(ev, "where", "") or getattr(ev, "description", "") or getattr(ev, "reason", "")
            or getattr(ev, "message", "") or "")


def event_row(ev: AnyEvent) -> dict[str, Any]:
    actor = getattr(ev, "actor", "") or getattr(ev, "requested_by", "")
    return {"ts": ev.ts.isoformat(), "type": type(ev).__name__, "actor": actor, "detail": event_detail(ev)}


class OpPage:
    """One operation as its page sees it: every event folded, the last `history` kept for display."""

    def __init__(self, op_id: str, history: int) -> None:
        self.view = OperationView(op_id=op_id)
        self.rows: deque[dict[str, Any]] = deque(maxlen=history)
        self.count = 0
        self.curves: dict[int, dict[str, float]] = {}

    def apply(self, ev: AnyEvent) -> dict[str, Any]:
        """Fold one event; return the update the page needs for it."""
        fold(self.view, ev)
        self.count += 1
        row = event_row(ev)
        self.rows.append(row)
        point = epoch_metrics(ev)
        if point is not None and (point[0] in self.curves or len(self.curves) < MAX_CURVE_POINTS):
            self.curves[point[0]] = point[1]
        return {"view": view_json(self.view), "row": row, "count": self.count,
                "point": [point[0], point[1]] if point else None}

    def snapshot(self) -> dict[str, Any]:
        return {"view": view_json(self.view), "history": list(self.rows), "count": self.count,
                "omitted": self.count - len(self.rows), "limit": self.rows.maxlen,
                "curves": sorted(self.curves.items())}


# A backtest's curve on the page: at most this many points per line (the worst drawdowns kept).
MAX_BACKTEST_POINTS = 2000


def backtest_result(view: OperationView) -> dict[str, Any] | None:
    """The backtest a page shows: a completed backtest's result, or a training workflow's backtest
    child's (its result under `backtest`); None for anything else."""
    r = view.result if view.status == "completed" else None
    if not isinstance(r, dict):
        return None
    if view_domain(view) == "backtest":
        return r
    child = r.get("backtest")
    return child if isinstance(child, dict) else None


def backtest_json(op_id: str, result: dict[str, Any], curve: Any) -> dict[str, Any]:
    """A backtest's figures (as `ktrdr backtest` prints them) and its equity curve against buy-and-hold
    with both drawdowns, thinned to MAX_BACKTEST_POINTS (each bucket's last bar and the worst ones)."""
    import pandas as pd

    from ktrdr.backtest.run import drawdown
    from ktrdr.cli.backtest_commands import figure_rows
    from ktrdr.plotting import thin_indices

    capital = float(result.get("capital") or 0.0) or float(curve["equity"].iloc[0])
    eq, bh = curve["equity"].to_numpy("float64"), curve["buy_hold"].to_numpy("float64")
    dd, bh_dd = drawdown(eq, capital), drawdown(bh, capital)
    pick = thin_indices(len(eq), [int(dd.argmin()), int(bh_dd.argmin())] if len(eq) else [],
                        MAX_BACKTEST_POINTS)
    ts = pd.to_datetime(curve["ts"], utc=True).iloc[pick]
    s = result.get("strategy") or {}

    def values(a: Any) -> list[float]:
        return [round(float(v), 6) for v in a[pick]]

    return {
        "op_id": op_id, "model": result.get("model"), "symbols": result.get("symbols") or [],
        "timeframe": result.get("timeframe"), "bars": result.get("bars"), "capital": capital,
        "start": s.get("start"), "end": s.get("end"), "simulated": bool(result.get("simulated")),
        "commission": result.get("commission"), "slippage_bps": result.get("slippage_bps"),
        "rows": [list(r) for r in figure_rows(result)],
        "curve": {"t": [int(t.value // 1_000_000) for t in ts], "equity": values(eq), "buy_hold": values(bh),
                  "drawdown": values(dd), "buy_hold_drawdown": values(bh_dd), "points": len(pick),
                  "bars": len(eq)},
    }
