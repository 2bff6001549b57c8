"""`python -m bench._steps_actor ROLE ...`: bench._actorproc with the backtest path's steps timed, each
step's wall-clock start and end appended as a JSON line to KTRDR_BENCH_STEPS_LOG (bench/research_steps.py
reads them). Wrappers only: what runs is the actors' own code."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from typing import Any

import actors._actor as actor_mod
import actors._leases as leases_mod
import actors._pull as pull_mod
import actors._work as work_mod
import actors.backtester as backtester_mod
import ktrdr.data.bars_store as bars_mod
import ktrdr.training.model_store as models_mod
from bench._common import time_calls

_LOG = open(os.environ["KTRDR_BENCH_STEPS_LOG"], "a", buffering=1)  # open for the process's life


def _mark(step: str, t0: float, t1: float | None = None) -> None:
    _LOG.write(json.dumps({"step": step, "t0": t0, "t1": time.time() if t1 is None else t1}) + "\n")


STEPS = [  # (owner, attribute, step name, async?)
    (work_mod.WorkRunner, "_spawn", "work item taken", True),
    (work_mod, "read_proven", "lifecycle read", True),
    (leases_mod.Leases, "acquire", "lease claim", True),
    (backtester_mod.Backtester, "handle", "handle", True),
    (models_mod.ModelStore, "resolve", "model resolve", True),
    (models_mod.ModelStore, "load_files", "model files", True),
    (models_mod.ModelStore, "expected_digests", "expected digests", True),
    (backtester_mod.Backtester, "_load", "model build", False),
    (bars_mod.BarStore, "load", "bars read", True),
    (backtester_mod, "run_backtest", "run", False),
    (backtester_mod, "curve_bytes", "curve encode", False),
    (models_mod.ModelStore, "save_backtest", "curve upload", True),
    (work_mod.WorkRunner, "_still_ours", "verdict lease check", True),
    (actor_mod.Actor, "publish_event", "verdict publish", True),
]
for owner, attr, step, is_async in STEPS:
    time_calls(owner, attr, functools.partial(_mark, step), is_async)

_pull_next = pull_mod.pull_next


async def _pull_timed(nc: Any, level: Any, expires_s: float | None) -> Any:
    """Each pull that brought a message (a no_wait one or a long poll), with its level."""
    t0 = time.time()
    msg = await _pull_next(nc, level, expires_s)
    if msg is not None:
        _mark(f"pull {'no_wait' if expires_s is None else 'long poll'} answered ({level.priority})", t0)
    return msg


pull_mod.pull_next = _pull_timed

_on_cancel = actor_mod.Actor._on_cancel_msg


async def _cancel_seen(self: actor_mod.Actor, msg: Any) -> None:
    _mark("cancel received", time.time())
    await _on_cancel(self, msg)


actor_mod.Actor._on_cancel_msg = _cancel_seen  # type: ignore[method-assign]

if __name__ == "__main__":
    from bench._actorproc import main

    main(sys.argv[1:])
