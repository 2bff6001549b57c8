"""A replayed view is the live view: `ops replay` prints, byte for byte, the lines the live display
printed (the CLI's own replay path against what the foreground command wrote to a pipe), for a
dummy, a data load and a whole training workflow."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_cli import ktrdr

pytestmark = pytest.mark.slow


async def _only_op(settings) -> str:
    rc, out, err = await ktrdr(settings, "ops", "list", "--json", "--flat")
    assert rc == 0, err
    views = [v for v in json.loads(out) if not v.get("parent_op_id")]
    assert len(views) == 1, views
    return views[0]["op_id"]


async def _assert_replay_equals_live(settings, live_out: str) -> None:
    op_id = await _only_op(settings)
    for speed in ("0", "1000"):
        rc, replayed, err = await ktrdr(settings, "ops", "replay", op_id, "--speed", speed)
        assert rc == 0 and replayed == live_out, (speed, err)
    assert len(live_out.splitlines()) >= 3  # progress lines, not just the first and the last


async def test_dummy_replay_prints_the_live_lines(start_actors, settings):
    await start_actors("orchestrator", "dummy")
    rc, live, err = await ktrdr(settings, "dummy", "--iterations", "30", "--interval", "0.1")
    assert rc == 0, err
    await _assert_replay_equals_live(settings, live)


async def test_data_load_replay_prints_the_live_lines(data_stack, data_settings, gateway):
    gateway.latency_s = 0.3
    rc, live, err = await ktrdr(data_settings, "data", "load", "AAPL", "-t", "1h", "--mode", "full",
                                "--start", "2023-01-02", "--end", "2023-09-01", timeout=120)
    assert rc == 0, err
    assert "Loading AAPL 1h data (full mode) [" in live
    await _assert_replay_equals_live(data_settings, live)


async def test_training_workflow_replay_prints_the_live_lines(data_stack, data_settings, start_actors):
    await start_actors("trainer", settings=data_settings)
    rc, live, err = await ktrdr(data_settings, "train", "strategies/mlp_rsi_aapl.yaml", "--epochs", "3",
                                "--start", "2023-01-02", "--end", "2023-12-01", timeout=180)
    assert rc == 0, err
    assert "Training completed" in live and "model:" in live
    _rc, out, err = await ktrdr(data_settings, "ops", "list", "--json")
    parent = next(v["op_id"] for v in json.loads(out) if v["op_type"] == "training_workflow")
    _rc, replayed, err = await ktrdr(data_settings, "ops", "replay", parent)
    # The foreground `train` adds the result summary after the final line; the rest is the replay.
    assert live.startswith(replayed), (live, replayed)
