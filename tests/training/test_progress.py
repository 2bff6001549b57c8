"""TrainingProgressBridge and the shared message format."""

from __future__ import annotations

from ktrdr.training.progress import TrainingProgressBridge, format_training_line, shorten_symbols
from tests.training.conftest import Recorder


def test_format_training_line_epoch_and_batch_levels() -> None:
    assert (
        format_training_line(["AAPL", "MSFT"], ["1h", "4h"], 15, 50)
        == "Training MLP on AAPL, MSFT [1h, 4h] [epoch 15/50]"
    )
    line = format_training_line(["AAPL"], ["1h"], 1, 50, 120, 640)
    assert line == "Training MLP on AAPL [1h] [Epoch 1/50 · Batch 120/640]"


def test_shorten_symbols_past_two_adds_count() -> None:
    assert shorten_symbols(["AAPL", "MSFT", "GOOG"]) == "AAPL, MSFT (+1 more)"
    assert shorten_symbols(["AAPL", "MSFT"]) == "AAPL, MSFT"


def test_bridge_throttles_batches_and_maps_percentage_into_training_band() -> None:
    rec = Recorder()
    bridge = TrainingProgressBridge(
        rec, strategy="s", symbols=["AAPL"], timeframes=["1h"], total_epochs=2, batch_every=3
    )
    bridge.set_shape(2, 7)
    wanted = [b for b in range(1, 8) if bridge.wants_batch(b)]
    assert wanted == [1, 3, 6, 7]
    for b in wanted:
        bridge.batch(1, b)
    bridge.epoch(1, {"train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.4})
    assert rec.updates[-1].percentage == 50.0  # half the epochs done: halfway through 10..90
    assert rec.updates[-1].context.metrics["val_loss"] == 1.1
    assert rec.updates[0].items_processed == 1 and rec.updates[0].items_total == 14
    bridge.resumed(1)
    assert rec.updates[-1].message == "Resumed from checkpoint at epoch 1"
    assert rec.updates[-1].context.resumed_from_epoch == 1


def test_bridge_emits_the_wire_progress_state() -> None:
    import msgspec

    from events.messages import ProgressState, TrainingContext

    rec = Recorder()
    bridge = TrainingProgressBridge(rec, strategy="s", symbols=["AAPL"], timeframes=["1h"], total_epochs=1)
    bridge.set_shape(1, 4)
    bridge.epoch(1, {"train_loss": 0.5, "learning_rate": 0.01})
    state = rec.updates[-1]
    assert isinstance(state, ProgressState) and isinstance(state.context, TrainingContext)
    assert state.message.endswith("train_loss=0.5000")  # the learning rate stays in the metrics only
    decoded = msgspec.json.decode(msgspec.json.encode(state), type=ProgressState)
    assert decoded.context.metrics == {"train_loss": 0.5, "learning_rate": 0.01} and decoded.percentage == 90.0
