"""The operations index's pure part: an operation's summary (events.messages.OpSummary) from its
folded view, the keys it is filed under, and the selection `ops list` makes (filters, newest page,
a `--before` cursor). Nothing here reads NATS: the readers hand it views or summaries.

Keys (a KV layout so the newest page, a time window and the live set are read without scanning
history): `t.<yyyymmddHH>.<MM>.<op_id>` by the hour and minute the id was made, `live.<op_id>` while the
operation has not ended, `h.<yyyymmddHH>` once an hour has any operation (so a reader learns which
hours to walk in one read, however many are empty), and `meta.applied` the watermark (IndexMark).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

from events import subjects
from events.bounds import MAX_LABEL, MAX_REASON, MAX_SEARCH_TEXT, MAX_SYMBOLS, PRIORITIES, SYMBOL_PATTERN
from events.messages import CancelReason, OpSummary
from ktrdr.ops.search import hour_fits, id_start
from ktrdr.ops.view import TERMINAL, OperationView
from ktrdr.rendering import ProgressRenderer

CANCEL_REASONS = frozenset(get_args(CancelReason))
MAX_PAGE = 1000  # the most rows one `ops list` page may ask for (--limit)
_SYMBOL = re.compile(SYMBOL_PATTERN)


def _symbols(command: dict[str, Any] | None) -> list[str]:
    if not command:
        return []
    raw = command.get("symbols") or ([command["symbol"]] if command.get("symbol") else [])
    return [s for s in raw if isinstance(s, str) and _SYMBOL.fullmatch(s)][:MAX_SYMBOLS]


def _strategy(command: dict[str, Any] | None) -> str:
    """The strategy a command names: a training's file stem, a backtest's model ref's first part."""
    if not command:
        return ""
    path, model = command.get("strategy_path"), command.get("model")
    if isinstance(path, str) and path:
        return path.rsplit("/", 1)[-1].removesuffix(".yaml").removesuffix(".yml")[:MAX_LABEL]
    if isinstance(model, str) and model:
        return model.split("/", 1)[0][:MAX_LABEL]
    return ""


def _cut(text: str | None, bound: int = MAX_REASON) -> str:
    return (text or "")[:bound]


def summarize(view: OperationView, seq: int = 0) -> OpSummary:
    """The summary of one folded view; `seq`: the OPS sequence of the last lifecycle event in it.
    An ended operation's summary also holds its list row (`row`: its last progress is expected in
    the view already, ktrdr.ops.reader.latest_progress)."""
    ended = view.status in TERMINAL
    row: dict[str, Any] = {}
    if ended:
        row = {"row": True, "domain": _cut(view.domain, MAX_LABEL), "description": _cut(view.description),
               "error": _cut(view.error), "reason": _cut(view.reason), "where": _cut(view.where),
               "message": _cut(view.message), "phase": _cut(view.phase, MAX_LABEL),
               "percentage": min(max(float(view.percentage), 0.0), 100.0), "context": view.context,
               "line": _cut(ProgressRenderer.for_domain(view_domain(view)).final(view)),
               "worker": _cut(view.worker, MAX_LABEL), "started_at": view.started_at}
    return OpSummary(
        op_id=view.op_id, op_type=view.op_type[:64], pool=(view.pool or "")[:64], status=view.status,
        priority=view.priority if view.priority in PRIORITIES else "",  # type: ignore[arg-type]
        reason_code=(view.error_code or view.reason_code or "")[:64], created_at=view.created_at,
        updated_at=view.updated_at, ended_at=view.finished_at if ended else None,
        symbols=_symbols(view.command), parent=view.parent_op_id or "", attempts=view.attempts,
        epoch=view.epoch, seq=seq, strategy=_strategy(view.command), schedule=_cut(view.schedule_name, MAX_LABEL),
        **row)


def view_domain(view: OperationView) -> str:
    """The operation's domain: its view's, else its id's ("" for an id that names none)."""
    if view.domain:
        return view.domain
    try:
        return subjects.domain_of(view.op_id)
    except ValueError:
        return ""


def row_view(s: OpSummary) -> OperationView:
    """An ended operation's list row as a view, from its summary alone (`s.row` True). What a
    summary does not hold stays at the view's default: `result`, `command`, `children`, `events`,
    the cancel request's fields; `line` (an attribute beside the fields, never encoded) is the
    renderer's final line the indexer rendered from the full view (the page's list shows it)."""
    failed = s.status in ("failed", "rejected")
    view = OperationView(
        op_id=s.op_id, domain=s.domain, op_type=s.op_type, description=s.description, status=s.status,
        created_at=s.created_at, started_at=s.started_at, finished_at=s.ended_at, updated_at=s.updated_at,
        percentage=s.percentage, message=s.message, phase=s.phase, context=s.context,
        error=s.error or None, error_code=(s.reason_code or None) if failed else None, where=s.where or None,
        reason=s.reason or None,
        reason_code=s.reason_code if s.status == "cancelled" and s.reason_code in CANCEL_REASONS else None,  # type: ignore[arg-type]
        worker=s.worker or None, attempts=s.attempts, parent_op_id=s.parent or None, pool=s.pool or None,
        priority=s.priority or None, epoch=s.epoch)
    view.line = s.line  # type: ignore[attr-defined]
    return view


TIME_PREFIX, LIVE_PREFIX, HOUR_PREFIX = "t.", "live.", "h."
MARK_KEY = "meta.applied"
HOUR = timedelta(hours=1)


def hour_of(op_id: str) -> str:
    return f"{subjects.created_at_of(op_id):%Y%m%d%H}"


def hour_key(op_id: str) -> str:
    """The time-bucket key of an operation: its id's creation hour, then minute (a busy hour is read
    minute by minute)."""
    return f"{TIME_PREFIX}{subjects.created_at_of(op_id):%Y%m%d%H.%M}.{op_id}"


def hour_marker(op_id: str) -> str:
    return f"{HOUR_PREFIX}{hour_of(op_id)}"


def live_key(op_id: str) -> str:
    return f"{LIVE_PREFIX}{op_id}"


def hour_start(hour: str) -> datetime:
    """The start of an hour key (yyyymmddHH), UTC; ValueError for anything else."""
    return datetime.strptime(hour, "%Y%m%d%H").replace(tzinfo=UTC)


def hours_to_walk(hours: Iterable[str], filters: Filters, before: str | None) -> list[str]:
    """The hours (yyyymmddHH, newest first) that may hold rows of the page asked for: overlapping
    [--since, --until) and starting no later than the --before cursor."""
    cut, cut_id = before_key(before) if before else (None, "")
    out = []
    for h in hours:
        try:
            start = hour_start(h)
        except ValueError:
            continue  # not an hour key: nothing of ours
        if (filters.since is not None and start + HOUR <= filters.since) or \
                (filters.until is not None and start >= filters.until) or \
                (cut is not None and (start > cut or (start == cut and not cut_id))) or \
                (filters.id_digits is not None and not hour_fits(h, filters.id_digits)):  # a time cursor: before it
            continue
        out.append(h)
    return sorted(out, reverse=True)


def keys_of(summary: OpSummary) -> tuple[list[str], list[str]]:
    """The keys to write the summary under, and those to delete (the live key once it ended)."""
    live = live_key(summary.op_id)
    if summary.status in TERMINAL:
        return [hour_key(summary.op_id)], [live]
    return [hour_key(summary.op_id), live], []


def newer(old: OpSummary | None, new: OpSummary) -> bool:
    """Whether `new` should replace `old`: a fold from a later event (redelivery and a second
    indexer then change nothing)."""
    return old is None or new.seq > old.seq or (new.seq == 0 and old.seq == 0)


def parse_when(text: str) -> datetime:
    """A `--since/--until` value: an ISO date or time (UTC when no zone is given); ValueError otherwise."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not a date or time (use e.g. 2026-12-01 or 2026-12-01T13:00)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


MAX_TEXT = MAX_SEARCH_TEXT  # a free-text filter (`ops list --text`, the page's search box) is at most this long


class Filters:
    """What `ops list` keeps: each field None keeps everything. `text`: a piece of the op id, a
    symbol, the strategy, the pool, the schedule or the description, in any case (the fields the
    search words are filed from, ktrdr.ops.search)."""

    def __init__(self, *, status: str | None = None, op_type: str | None = None, pool: str | None = None,
                 since: datetime | None = None, until: datetime | None = None, symbol: str | None = None,
                 parent: str | None = None, text: str | None = None) -> None:
        self.status, self.op_type, self.pool = status, op_type, pool
        self.since, self.until, self.symbol, self.parent = since, until, symbol, parent
        self.text = text.lower() if text else None
        # A text that is the start of an op id fixes the hours its operations can be in.
        self.id_digits = start[1] if self.text and (start := id_start(self.text)) is not None else None

    @property
    def any(self) -> bool:
        return any(v is not None for v in vars(self).values())

    def keeps(self, s: OpSummary) -> bool:
        made = subjects.created_at_of(s.op_id)
        return ((self.status is None or s.status == self.status)
                and (self.op_type is None or self.op_type in (s.op_type, s.op_id.split("-", 1)[0]))
                and (self.pool is None or s.pool == self.pool)
                and (self.since is None or made >= self.since)
                and (self.until is None or made < self.until)
                and (self.symbol is None or self.symbol.upper() in s.symbols)
                and (self.parent is None or s.parent == self.parent)
                and (self.text is None or self.text in " ".join((s.op_id, *s.symbols, s.strategy, s.pool,
                                                                 s.schedule, s.description)).lower()))


def before_key(cursor: str) -> tuple[datetime, str]:
    """The position a `--before` cursor names: an op id (rows made before it) or a date/time."""
    if subjects.is_op_id(cursor):
        return subjects.created_at_of(cursor), cursor
    return parse_when(cursor), ""


def page(summaries: Iterable[OpSummary], filters: Filters, limit: int | None,
         before: str | None = None) -> tuple[list[OpSummary], str | None]:
    """The newest `limit` summaries kept by `filters` made before the cursor, oldest first, and the
    cursor for the page before it (None when this page reaches the oldest)."""
    cut = before_key(before) if before else None
    kept = sorted((s for s in summaries if filters.keeps(s)
                   and (cut is None or (subjects.created_at_of(s.op_id), s.op_id) < cut)),
                  key=lambda s: (subjects.created_at_of(s.op_id), s.op_id))
    if not limit or len(kept) <= limit:
        return kept, None
    out = kept[-limit:]
    return out, out[0].op_id
