"""job-manager: the seed's DataManager + DataJobManager as an actor. Handles `work.data.<pool>`: runs a
DataLoadingJob (gap analysis, segment plan, concurrent paced fetching, merge, validate/repair,
store) whose fetches go to the ib actor(s) over `ib.*`, and publishes the job's progress as is.
Pacing waits reported by the ib actor show up in the progress context (`waiting 12 s for IB
pacing`). Segments stored before a cancel or failure stay stored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd

from actors.runtime import Actor, OperationContext
from events.messages import LoadData
from ktrdr.data.calendar import normalize_symbol
from ktrdr.data.loading import DataLoadingJob, Segment
from ktrdr.data.store import DataStore
from ktrdr.data.timeframes import parse_timeframe
from ktrdr.transport import IbRequester


class JobManager(Actor):
    role = "job-manager"
    work_domain = "data"
    max_concurrency = 4
    # Segments in flight per load: one burst's worth. IB's burst rule allows 5 requests per contract
    # per 2 s, so keeping that pace takes 2.5 x latency requests open (5 at 2 s per answer). More
    # would only wait in the ib actor's PacingLimiter and, measured, stretch the cancel tail: a cancel
    # waits for fetched segments to be merged into the store (8 in flight: p99 32-63 ms; 4: 5 ms).
    segment_concurrency = 5

    async def handle(self, op: OperationContext) -> dict[str, Any]:
        cmd = op.command
        assert isinstance(cmd, LoadData) and self.nc is not None
        symbol = normalize_symbol(cmd.symbol)
        tf = parse_timeframe(cmd.timeframe)
        ib = IbRequester(self.nc)
        source = "local"
        if cmd.mode != "local":
            _contract, source = await ib.contract(symbol, op.op_id)  # unknown symbols fail here, fast

        async def fetch(seg: Segment) -> pd.DataFrame:
            df, _src = await ib.bars(symbol, tf.name, pd.Timestamp(seg.start).to_pydatetime(),
                                     pd.Timestamp(seg.end).to_pydatetime(), op_id=op.op_id, on_wait=job.note_wait)
            return df

        async def head() -> datetime | None:
            return await ib.head(symbol, tf.name, op.op_id)

        job = DataLoadingJob(DataStore(self.settings.home), symbol, tf.name, cmd.mode, cmd.start, cmd.end,
                             fetch=fetch, head_timestamp=head, cancel=op.token, on_progress=op.progress,
                             max_concurrency=self.segment_concurrency, source=source,
                             pacing_wait_s=60.0 * self.settings.ib_time_scale)
        result = await job.run()
        return result.to_dict()

    def cancelled_message(self, op: OperationContext, where: str) -> str:
        cmd = op.command
        assert isinstance(cmd, LoadData)
        return (f"Data load of {cmd.symbol} {cmd.timeframe} cancelled at {where}; segments fetched before the "
                f"cancel are stored" if where else "Data load cancelled")
