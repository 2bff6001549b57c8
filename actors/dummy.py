"""dummy: a long operation that only sleeps and reports (the seed's reference operation): 100
iterations x 2 s by default, progress every iteration, cancellable between and during iterations (the
sleep wakes on the cancel)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from actors.runtime import Actor, OperationContext
from events.messages import DummyContext, RunDummy


class DummyWorker(Actor):
    role = RunDummy.role
    work_domain = "dummy"
    max_concurrency = 8

    async def handle(self, op: OperationContext) -> dict[str, Any]:
        cmd = op.command
        assert isinstance(cmd, RunDummy)
        n, t0 = cmd.iterations, time.monotonic()
        for i in range(1, n + 1):
            if cmd.interval_s > 0:
                await op.sleep(cmd.interval_s, where=f"iteration {i}/{n}")
            else:
                await asyncio.sleep(0)  # a zero interval still yields: heartbeats and cancels get through
                op.token.raise_if_cancelled(f"iteration {i}/{n}")
            op.progress(
                percentage=100.0 * i / n, message=f"Working on iteration {i}/{n}", current_step=i,
                total_steps=n, items_processed=i, items_total=n, phase="running",
                context=DummyContext(iteration=i, iterations=n))
        return {"iterations_completed": n, "elapsed_s": round(time.monotonic() - t0, 3)}
