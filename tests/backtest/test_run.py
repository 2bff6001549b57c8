"""A backtest run as the actor runs it, without a server: several symbols as equal sleeves, a range
with no bars, a cancel between chunks and inside one, a start inside the bars."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ktrdr.backtest import BacktestJob, TrainedModel, run_backtest
from ktrdr.cancellation import CancellationToken
from ktrdr.errors import DataError, OperationCancelledError
from tests.training.conftest import make_bars


def test_two_symbols_are_equal_sleeves_whose_sum_is_the_portfolio(bars, files) -> None:
    files = {**files, "metadata.json": json.dumps({"symbols": ["AAPL", "MSFT"], "timeframes": ["1h"]}).encode()}
    other = make_bars(900, seed=8, start="2024-01-10 00:30")  # a later start: the union has bars of one only
    job = BacktestJob("t/AAPL-MSFT_1h_v1", ["AAPL", "MSFT"], capital=10_000, chunk_bars=300)
    out = run_backtest(job, TrainedModel.from_files(files), {"AAPL": {"1h": bars}, "MSFT": {"1h": other}})
    r = out.result
    sleeves = r["per_symbol"]
    assert set(sleeves) == {"AAPL", "MSFT"}
    assert r["strategy"]["final_equity"] == pytest.approx(
        sleeves["AAPL"]["strategy"]["final_equity"] + sleeves["MSFT"]["strategy"]["final_equity"])
    assert r["buy_and_hold"]["final_equity"] == pytest.approx(
        sleeves["AAPL"]["buy_and_hold"]["final_equity"] + sleeves["MSFT"]["buy_and_hold"]["final_equity"])
    assert r["strategy"]["trades"] == sleeves["AAPL"]["strategy"]["trades"] + sleeves["MSFT"]["strategy"]["trades"]
    # Before MSFT's first bar its sleeve is its cash: the portfolio starts from the whole capital.
    assert out.curve["ts"].iloc[0] == bars.index[0] and len(out.curve) == len(bars.index.union(other.index))
    assert out.curve["equity"].iloc[0] == pytest.approx(5_000 + out.runs["AAPL"].equity_curve()[0])


def test_a_range_with_no_bars_is_a_data_error_naming_the_symbol(bars, files) -> None:
    job = BacktestJob("t/AAPL_1h_v1", ["AAPL"], start=bars.index[-1].to_pydatetime().replace(year=2030))
    with pytest.raises(DataError, match="no 1h bars for AAPL in the requested range"):
        run_backtest(job, TrainedModel.from_files(files), {"AAPL": {"1h": bars}})


def test_a_cancel_between_chunks_says_the_last_bar_run(bars, files) -> None:
    token = CancellationToken()
    seen: list[int] = []

    def emit(state) -> None:  # the second chunk's report trips the cancel
        seen.append(state.context.bars_done)
        if len(seen) == 2:
            token.cancel("user asked")

    job = BacktestJob("t/AAPL_1h_v1", ["AAPL"], chunk_bars=250)
    with pytest.raises(OperationCancelledError) as err:
        run_backtest(job, TrainedModel.from_files(files), {"AAPL": {"1h": bars}}, emit=emit, cancel=token)
    assert seen == [250, 500]
    assert err.value.where == f"AAPL {bars.index[499].isoformat()}" and err.value.reason == "user asked"


def test_a_cancel_during_a_chunks_signals_stops_before_its_trading(bars, files, monkeypatch) -> None:
    """The cancel is read inside a chunk too (after its signals, before its positions and equity): a
    cancel arriving while chunk 2's signals are computed stops there, at chunk 1's last bar, with no
    report of chunk 2."""
    seen, calls, err = _cancelled_at_second_decide(files, bars, monkeypatch)  # chunk 2's forward pass
    assert seen == [250] and len(calls) == 2
    assert err.value.where == f"AAPL {bars.index[249].isoformat()}"


def test_a_start_inside_the_bars_trades_from_it_with_the_bars_before_warming_up(bars, files) -> None:
    model = TrainedModel.from_files(files)
    whole = run_backtest(BacktestJob("t/AAPL_1h_v1", ["AAPL"], chunk_bars=250), model, {"AAPL": {"1h": bars}})
    at = bars.index[600]
    part = run_backtest(BacktestJob("t/AAPL_1h_v1", ["AAPL"], start=at.to_pydatetime(), chunk_bars=250), model,
                        {"AAPL": {"1h": bars}})
    assert part.result["bars"] == len(bars) - 600 and part.result["strategy"]["start"] == at.isoformat()
    assert list(part.signals["AAPL"]) == list(whole.signals["AAPL"][600:])  # the same features from the warm-up


def test_a_cancel_during_a_chunks_forward_pass_stops_before_its_next_batch(bars, files, monkeypatch) -> None:
    """Inside a chunk the forward pass goes in batches of DECIDE_ROWS with the cancel read between
    them: a cancel during the first chunk's second batch stops before its third."""
    import ktrdr.backtest.run as run

    monkeypatch.setattr(run, "DECIDE_ROWS", 100)
    seen, calls, err = _cancelled_at_second_decide(files, bars, monkeypatch)
    assert calls == [100, 100] and seen == []
    assert err.value.where == "AAPL before its first bar"


def _cancelled_at_second_decide(files, bars, monkeypatch) -> tuple[list[int], list[int], Any]:
    """A 250-bar-chunk backtest cancelled during the model's second forward-pass call: the progress
    it reported (bars done), the calls' row counts, and the cancel error."""
    token = CancellationToken()
    model = TrainedModel.from_files(files)
    real, calls = model.decide, []

    def decide(x):
        calls.append(len(x))
        if len(calls) == 2:
            token.cancel("user asked")
        return real(x)

    monkeypatch.setattr(model, "decide", decide)
    seen: list[int] = []
    job = BacktestJob("t/AAPL_1h_v1", ["AAPL"], chunk_bars=250)
    with pytest.raises(OperationCancelledError) as err:
        run_backtest(job, model, {"AAPL": {"1h": bars}}, emit=lambda s: seen.append(s.context.bars_done),
                     cancel=token)
    return seen, calls, err
