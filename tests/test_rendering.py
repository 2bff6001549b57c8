"""Renderers reproduce KTRDR's lines from a folded view (the same code renders live and replay)."""

from __future__ import annotations

from events.messages import DataContext, OperationProgress, ProgressState, TrainingContext
from ktrdr.ops import OperationView, fold
from ktrdr.rendering import DataProgressRenderer, ProgressRenderer, TrainingProgressRenderer


def view_with(progress: ProgressState) -> OperationView:
    return fold(OperationView(op_id="x"), OperationProgress(op_id="x", progress=progress))


def test_data_line_has_symbol_timeframe_mode_and_segment():
    v = view_with(ProgressState(percentage=60, phase="fetching", context=DataContext(
        symbol="AAPL", timeframe="1h", mode="backfill", segment_index=5, segment_count=5, segments_done=3,
        bars_fetched=1234, source="sim", state="fetching")))
    line = DataProgressRenderer().line(v)
    # segments done of planned, not the index of the one in flight (which goes back and forth)
    assert line.startswith("Loading AAPL 1h data (backfill mode) [3/5] · 1,234 bars")
    assert "(simulated)" in line and line.endswith("60.0%")


def test_data_line_shows_pacing_waits_as_state():
    v = view_with(ProgressState(context=DataContext(symbol="AAPL", timeframe="1m", mode="full", segment_index=1,
                                                    segment_count=70, waiting_s=12.4, source="ib")))
    assert "waiting 12 s for IB pacing" in DataProgressRenderer().line(v)


def test_short_pacing_waits_are_not_rendered_and_long_ones_are_rounded():
    def line(wait: float) -> str:
        return DataProgressRenderer().line(view_with(ProgressState(context=DataContext(
            symbol="AAPL", timeframe="1m", mode="full", segment_count=9, waiting_s=wait,
            state=f"waiting {wait:.3g} s for IB pacing: 6 requests for 265598 within 2 s"))))

    assert "waiting" not in line(0.00422) and "0.00422" not in line(0.00422)
    assert "waiting 4.2 s for IB pacing" in line(4.2)
    assert "waiting 12 s for IB pacing" in line(12.4)


def test_a_deadline_is_rendered_with_where_it_stopped():
    from events.messages import OperationCancelled

    v = view_with(ProgressState(percentage=40))
    fold(v, OperationCancelled(op_id="x", where="epoch 12, batch 3", reason="deadline of 60 s passed",
                               reason_code="deadline"))
    assert TrainingProgressRenderer().final(v) == "cancelled: deadline of 60 s passed at epoch 12, batch 3"


def test_training_line_shortens_symbols_and_shows_batches():
    ctx = TrainingContext(symbols=["AAPL", "MSFT", "GOOGL"], timeframes=["1h", "4h"], epoch=15, total_epochs=50)
    v = view_with(ProgressState(phase="training", context=ctx))
    assert TrainingProgressRenderer().progress_text(v) == \
        "Training MLP on AAPL, MSFT (+1 more) [1h, 4h] [epoch 15/50]"
    ctx2 = TrainingContext(symbols=["AAPL"], timeframes=["1h"], epoch=1, total_epochs=50, batch=120,
                           total_batches=640)
    v2 = view_with(ProgressState(phase="training", context=ctx2))
    assert "Epoch 1/50 · Batch 120/640" in TrainingProgressRenderer().progress_text(v2)


def test_renderer_is_chosen_by_domain():
    assert isinstance(ProgressRenderer.for_domain("data"), DataProgressRenderer)
    assert isinstance(ProgressRenderer.for_domain("training"), TrainingProgressRenderer)
