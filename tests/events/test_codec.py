"""The wire codec: every message round-trips, tags make the JSON self-describing, and hostile payloads
(deep nesting, wrong types, unknown tags) are a DecodeError, never another exception."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import msgspec
import pytest

from events import subjects
from events.bounds import Timeframe
from events.codec import (
    DecodeError,
    InvalidField,
    check,
    decode,
    decode_command,
    decode_event,
    decode_work,
    encode,
    sniff_op_id,
)
from events.messages import (
    COMMANDS,
    EVENTS,
    CancelOperation,
    DataContext,
    LoadData,
    OperationProgress,
    ProgressState,
    RunBacktest,
    RunDummy,
    RunSweep,
    StartTraining,
    SweepParam,
    WorkItem,
)


def sample_commands():
    t = datetime(2024, 1, 2, tzinfo=UTC)
    return [RunDummy(op_id=subjects.new_op_id("dummy"), iterations=3),
            LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", start=t, end=t.replace(day=3)),
            StartTraining(op_id=subjects.new_op_id("training"), strategy_yaml="name: x", epochs=2, pool="gpu"),
            RunBacktest(op_id=subjects.new_op_id("backtest"), model="mlp_rsi_aapl/AAPL_1h_v1", symbols=["AAPL"],
                        start=t, capital=5_000.0, commission=0.0005, slippage_bps=2.0),
            RunSweep(op_id=subjects.new_op_id("training"), strategy_yaml="name: x", max_parallel=3, backtest=True,
                     params=[SweepParam(path="model.training.learning_rate", values=[0.001, 0.0003]),
                             SweepParam(path="model.architecture.hidden_layers", values=[[32], [64, 32]])],
                     rank_by="sharpe")]


@pytest.mark.parametrize("cmd", sample_commands(), ids=lambda c: type(c).__name__)
def test_every_command_round_trips_with_its_type_tag(cmd):
    data = encode(cmd)
    assert json.loads(data)["type"] == type(cmd).__name__
    assert decode_command(data) == cmd
    item = WorkItem(op_id=cmd.op_id, domain=cmd.domain, command=cmd)
    assert decode_work(encode(item)) == item


def test_every_command_type_is_sampled():
    assert {type(c) for c in sample_commands()} == set(COMMANDS)


def test_progress_event_with_typed_context_round_trips():
    op_id = subjects.new_op_id("data")
    ev = OperationProgress(op_id=op_id, actor="job-manager-x", seq=7, progress=ProgressState(
        percentage=42.5, message="m", context=DataContext(symbol="AAPL", timeframe="1h", segments_done=3)))
    back = decode_event(encode(ev))
    assert back == ev and isinstance(back.progress.context, DataContext)


@pytest.mark.parametrize("payload", [
    b"", b"not json", b"[1,2]", b'{"type":"Nope","op_id":"x"}', b'{"type":"RunDummy"}',
    b'{"type":"RunDummy","op_id":"dummy-x","iterations":"many"}', b"\xff\xfe",
    b"[" * 100_000 + b"]" * 100_000,  # deeper than any recursion limit
    b'{"type":"R\xednDummy","op_id":"x"}',  # not UTF-8 where the tag is read (msgspec: UnicodeDecodeError)
    b'{"type":"RunDummy","op_id":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
])
def test_hostile_payloads_are_decode_errors(payload):
    for dec in (decode_command, decode_event, decode_work):
        with pytest.raises(DecodeError):
            dec(payload)
    sniff_op_id(payload)  # best effort, never raises


def test_stored_v1_events_still_decode():
    """Events written by the first version (no pool, no reason_code, a load_data field) still read."""
    op_id = subjects.new_op_id("training")
    v1 = {"type": "OperationCreated", "v": 1, "op_id": op_id, "ts": "2026-11-28T10:00:00Z", "actor": "orch",
          "seq": 1, "domain": "training", "op_type": "training", "description": "",
          "command": {"type": "StartTraining", "v": 1, "op_id": op_id, "ts": "2026-11-28T10:00:00Z",
                      "requested_by": "cli", "strategy_yaml": "x", "load_data": True}}
    ev = decode_event(json.dumps(v1).encode())
    assert ev.command.pool == "any" and ev.command.deadline is None
    cancel = decode(json.dumps({"type": "CancelOperation", "v": 1, "op_id": op_id}).encode(), CancelOperation)
    assert cancel.reason_code == "user"


def test_every_event_has_a_distinct_subject_name():
    names = [e.name for e in EVENTS]
    assert len(names) == len(set(names)) and all(n and "." not in n for n in names)
    assert {e.name for e in EVENTS if e.terminal} == {"completed", "failed", "cancelled", "rejected", "orch_completed",
                                                     "orch_failed", "orch_cancelled"}


def test_encode_is_plain_json_for_nats_sub():
    ev = CancelOperation(op_id=subjects.new_op_id("dummy"), reason="r")
    assert msgspec.json.decode(encode(ev))["reason"] == "r"


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"type": "RunDummy", "iterations": 0}, "iterations", "must be between 1 and 10000, got 0"),
    ({"type": "RunDummy", "interval_s": 61}, "interval_s", "must be between 0 and 60, got 61"),
    ({"type": "RunDummy", "pool": "a.b"}, "pool", "'a.b' is not a pool name"),
    ({"type": "RunDummy", "requested_by": "x" * 600}, "requested_by", "longer than 512 characters"),
    ({"type": "LoadData", "symbol": "../../etc"}, "symbol", "'../../etc' is not a symbol"),
    ({"type": "LoadData", "symbol": "A" * 900_000}, "symbol", "(900002 characters) is not a symbol"),
    ({"type": "LoadData", "symbol": "AAPL", "timeframe": "7h"}, "timeframe", "'7h' is not one of 1m, 5m"),
    ({"type": "LoadData", "symbol": "AAPL", "mode": "all"}, "mode", "'all' is not one of"),
    ({"type": "StartTraining", "symbols": ["AAPL"] * 51}, "symbols", "at most 50 items, got 51"),
    ({"type": "StartTraining", "symbols": ["AAPL", "A*"]}, "symbols[1]", "'A*' is not a symbol"),
    ({"type": "StartTraining", "timeframes": ["1h"] * 9}, "timeframes", "at most 8 items, got 9"),
    ({"type": "StartTraining", "epochs": 10**9}, "epochs", "must be between 1 and 100000"),
])
def test_a_bound_is_checked_at_decode_and_named_in_words(fields, field, words):
    """The bounds live in the types: the decoder refuses what is out of them, in one line that names
    the field path and the bound (the orchestrator rejects with it, the CLI prints it)."""
    domain = {"RunDummy": "dummy", "LoadData": "data", "StartTraining": "training"}[fields["type"]]
    data = json.dumps({"op_id": subjects.new_op_id(domain), **fields}).encode()
    with pytest.raises(InvalidField) as info:
        decode_command(data)
    assert info.value.field == field and words in info.value.problem
    assert str(info.value).startswith(f"{field}: ") and "\n" not in str(info.value) and len(str(info.value)) < 300
    item = b'{"type":"WorkItem","op_id":"x","domain":"d","command":' + data + b"}"
    with pytest.raises(InvalidField) as nested:
        decode_work(item)
    assert nested.value.field == f"command.{field}"


def test_a_message_made_in_python_is_held_to_the_same_bounds():
    check(RunDummy(op_id=subjects.new_op_id("dummy"), iterations=3))
    with pytest.raises(InvalidField, match="iterations: must be between 1 and 10000, got 0"):
        check(RunDummy(op_id=subjects.new_op_id("dummy"), iterations=0))


def test_a_timeframe_is_its_name_on_the_wire_and_one_type_after_decode():
    cmd = LoadData(op_id=subjects.new_op_id("data"), symbol="AAPL", timeframe=Timeframe.H4)
    assert json.loads(encode(cmd))["timeframe"] == "4h"
    back = decode_command(encode(cmd))
    assert back.timeframe is Timeframe.H4 and back.timeframe == "4h" and f"{back.timeframe}" == "4h"
    old = json.dumps({"type": "LoadData", "op_id": cmd.op_id, "symbol": "AAPL", "timeframe": "1d"}).encode()
    assert decode_command(old).timeframe is Timeframe.D1  # what stored events carry decodes unchanged
    # Another client's spelling (accepted before the type existed, so maybe stored) reads as the type.
    typed = json.dumps({"type": "LoadData", "op_id": cmd.op_id, "symbol": "AAPL", "timeframe": "60m"}).encode()
    back = decode_command(typed)
    assert back.timeframe is Timeframe.H1 and json.loads(encode(back))["timeframe"] == "1h"


@pytest.mark.parametrize(("field", "value"), [("capital", 0.0), ("capital", 2e12), ("commission", -0.001),
                                              ("commission", 0.5), ("slippage_bps", -1.0), ("slippage_bps", 1e4),
                                              ("model", ""), ("model", "../etc x")])
def test_a_backtest_with_a_negative_or_absurd_value_is_a_decode_error_naming_the_field(field, value):
    good = json.loads(encode(RunBacktest(op_id=subjects.new_op_id("backtest"), model="m/AAPL_1h_v1")))
    with pytest.raises(DecodeError, match=field):
        decode_command(json.dumps({**good, field: value}).encode())
