"""The operations index's pure part: summaries, keys, `ops list` filters and paging with a cursor."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from events.bounds import MAX_REASON
from events.messages import OpSummary
from ktrdr.ops.index import Filters, keys_of, newer, page, parse_when, row_view, summarize
from ktrdr.ops.view import OperationView


def op(n: int, domain: str = "dummy", hour: int = 10) -> str:
    return f"{domain}-20261201T{hour:02d}0000{n:06d}-abcdef"


def summary(n: int, **kw: object) -> OpSummary:
    return OpSummary(op_id=op(n), **kw)  # type: ignore[arg-type]


def test_summary_of_a_finished_training_names_symbols_parent_and_end():
    view = OperationView(op_id=op(1, "training"), op_type="training", status="failed", pool="gpu",
                         error_code="no_data", command={"symbols": ["AAPL", "../etc"]}, parent_op_id=op(9),
                         created_at=datetime(2026, 12, 1, tzinfo=UTC), finished_at=datetime(2026, 12, 1, 1, tzinfo=UTC))
    s = summarize(view, seq=42)
    assert (s.status, s.pool, s.reason_code, s.parent, s.seq) == ("failed", "gpu", "no_data", op(9), 42)
    assert s.symbols == ["AAPL"]  # what is not a symbol is never kept
    assert s.ended_at == datetime(2026, 12, 1, 1, tzinfo=UTC)
    assert msgspec.json.decode(msgspec.json.encode(s), type=OpSummary) == s


def test_live_operation_keeps_a_live_key_and_an_ended_one_drops_it():
    put, drop = keys_of(summary(1, status="running"))
    assert put == [f"t.2026120110.00.{op(1)}", f"live.{op(1)}"] and drop == []
    put, drop = keys_of(summary(1, status="completed"))
    assert put == [f"t.2026120110.00.{op(1)}"] and drop == [f"live.{op(1)}"]


def test_redelivered_older_event_does_not_replace_newer_summary():
    assert not newer(summary(1, seq=10), summary(1, seq=9))
    assert not newer(summary(1, seq=10), summary(1, seq=10))
    assert newer(summary(1, seq=10), summary(1, seq=11)) and newer(None, summary(1, seq=1))


def test_pages_walk_back_through_history_with_the_printed_cursor():
    rows = [summary(n, status="completed") for n in range(1, 8)]
    first, cursor = page(rows, Filters(), 3)
    assert [s.op_id for s in first] == [op(5), op(6), op(7)] and cursor == op(5)
    second, cursor = page(rows, Filters(), 3, before=cursor)
    assert [s.op_id for s in second] == [op(2), op(3), op(4)] and cursor == op(2)
    last, cursor = page(rows, Filters(), 3, before=cursor)
    assert [s.op_id for s in last] == [op(1)] and cursor is None


def test_filters_keep_only_matching_status_type_pool_symbol_parent_and_window():
    d1, load = op(1, "dummy"), op(5, "data")
    rows = [OpSummary(op_id=d1, status="failed", op_type="dummy"),
            OpSummary(op_id=op(2, "op"), status="completed", pool="gpu"),
            OpSummary(op_id=op(3, "op"), symbols=["AAPL"], parent=d1), OpSummary(op_id=op(4, "op", hour=12)),
            OpSummary(op_id=load, op_type="data_load")]

    def ids(f: Filters) -> list[str]:
        return [s.op_id for s in page(rows, f, None)[0]]

    assert ids(Filters(status="failed")) == [d1]
    assert ids(Filters(op_type="dummy")) == [d1]
    assert ids(Filters(op_type="data_load")) == ids(Filters(op_type="data")) == [load]  # type or domain
    assert ids(Filters(pool="gpu")) == [op(2, "op")]
    assert ids(Filters(symbol="aapl")) == [op(3, "op")]
    assert ids(Filters(parent=d1)) == [op(3, "op")]
    assert ids(Filters(since=parse_when("2026-12-01T11:00"))) == [op(4, "op", hour=12)]
    assert ids(Filters(until=parse_when("2026-12-01T11:00"))) == [d1, op(2, "op"), op(3, "op"), load]
    assert ids(Filters(status="running")) == []


def test_bad_date_is_refused_with_an_example():
    with pytest.raises(ValueError, match="not a date or time"):
        parse_when("yesterday")
    assert parse_when("2026-12-01") == datetime(2026, 12, 1, tzinfo=UTC)


def test_an_ended_operations_row_comes_back_from_its_summary_with_long_texts_cut_to_their_bounds():
    view = OperationView(op_id=op(3), domain="dummy", op_type="dummy", status="failed", description="d" * 5000,
                         error="boom " * 1000, error_code="error", where="step 3", percentage=42.5, worker="dummy-1",
                         created_at=datetime(2026, 12, 1, tzinfo=UTC), finished_at=datetime(2026, 12, 1, 1, tzinfo=UTC))
    s = msgspec.json.decode(msgspec.json.encode(summarize(view, seq=7)), type=OpSummary)  # bounds checked
    assert s.row and len(s.description) == MAX_REASON and s.line.startswith("Operation failed: boom")
    row = row_view(s)
    assert (row.status, row.error, row.error_code, row.where, row.percentage, row.worker) == \
        ("failed", ("boom " * 1000)[:MAX_REASON], "error", "step 3", 42.5, "dummy-1")


def test_a_live_operation_or_an_older_indexers_summary_has_no_row_to_list_from():
    live = summarize(OperationView(op_id=op(4), status="running", description="still going"))
    older = msgspec.json.decode(b'{"op_id": "%s", "status": "completed"}' % op(5).encode(), type=OpSummary)
    assert not live.row and not older.row  # both read from OPS by the reader
