"""backtester: takes `work.backtest.<pool>`, runs a trained model over stored bars (ktrdr.backtest) in a
worker thread and publishes its progress after every chunk of bars; a cancel trips the token the
thread reads before each chunk and inside it (between its forward-pass batches and before its
trading), so it stops within part of a chunk and says at which bar. The model's files
come from MODELS (each checked against its recorded digest), the bars from BARS (through this host's
digest cache), and the equity curve goes back to MODELS beside the model, named by the operation. A
backtest is deterministic (same model, bars and costs: same figures), so work redelivered after a
backtester died is simply run again by another one, and the curve it stores is the same.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, ClassVar

import pandas as pd

from actors.runtime import Actor, OperationContext, metrics
from events.messages import RunBacktest
from ktrdr.backtest import BacktestJob, TrainedModel, backtest_symbols, curve_bytes, run_backtest
from ktrdr.backtest.model import MODEL_FILES
from ktrdr.data.bars_store import BarStore
from ktrdr.data.store import DigestCache
from ktrdr.errors import DataError
from ktrdr.training.model_store import ModelStore


class Backtester(Actor):
    role = RunBacktest.role
    work_domain = "backtest"
    max_concurrency = 1  # CPU-bound: one backtest at a time per process (start replicas for more)
    chunk_bars: int | None = None  # None: ktrdr.backtest.run's default
    # torch threads for the model's forward passes (process-wide; the trainer's torch runs in its own
    # child): one, as one backtest at a time runs here. Two threads on this 2-core host under load made
    # a 20,000-row forward pass 0.14-0.30 s against 0.08 s with one (bench/research.py).
    inference_threads: ClassVar[int] = 1

    @functools.cached_property
    def cache(self) -> DigestCache:
        return DigestCache(self.settings.cache_dir, self.settings.cache_max_bytes, self.settings.disk_min_free_bytes)

    async def handle(self, op: OperationContext) -> dict[str, Any]:
        cmd = op.command
        assert isinstance(cmd, RunBacktest) and self.js is not None
        store = ModelStore(self.js)
        op.progress(message=f"Loading model {cmd.model}", phase="loading_model")
        prefix = await store.resolve(cmd.model)
        # The bars are read while the model's files are fetched and checked: which bars is said by the
        # model's metadata.json, read here unchecked only to start early; what runs is decided by the
        # checked files (bars read for anything else are read again).
        guess = asyncio.create_task(self._guess_bars(store, prefix, cmd))
        try:
            _, files = await store.load_files(prefix, MODEL_FILES)
            model = await asyncio.to_thread(self._load, files)
            symbols = backtest_symbols(cmd.model, cmd.symbols, model.symbols)
            op.token.raise_if_cancelled("loading the bars")
            op.progress(message=f"Loading bars for {', '.join(symbols)} [{', '.join(model.timeframes)}]",
                        phase="loading_data")
            early = await guess
        finally:
            guess.cancel()
        if early is not None and early[0] == (set(symbols), set(model.timeframes)):
            bars, simulated = early[1]
        else:
            bars, simulated = await self._read_bars(symbols, model.timeframes, cmd)
        job = BacktestJob(model_ref=prefix, symbols=symbols, start=cmd.start, end=cmd.end, capital=cmd.capital,
                          commission=cmd.commission, slippage_bps=cmd.slippage_bps,
                          **({"chunk_bars": self.chunk_bars} if self.chunk_bars else {}))
        outcome = await asyncio.to_thread(run_backtest, job, model, bars, emit=op.progress, cancel=op.token)
        # the lease's say-so for the verdict is asked now, while the curve is encoded and stored
        op.confirm_ours_early()
        if outcome.result.get("elapsed_s"):
            metrics.BACKTEST_BARS_PER_S.labels(cmd.pool).set(
                outcome.result["bars"] / outcome.result["elapsed_s"])
        op.token.raise_if_cancelled("storing the equity curve")
        data = await asyncio.to_thread(curve_bytes, outcome.curve)
        strat, bh = outcome.result["strategy"], outcome.result["buy_and_hold"]
        summary = {"op_id": op.op_id, "symbols": symbols, "start": strat["start"], "end": strat["end"],
                   "total_return": strat["total_return"], "sharpe": strat["sharpe"],
                   "max_drawdown": strat["max_drawdown"], "trades": strat["trades"],
                   "buy_and_hold_return": bh["total_return"], "commission": cmd.commission,
                   "slippage_bps": cmd.slippage_bps}
        stored = await store.save_backtest(prefix, op.op_id, data, summary)
        return {**outcome.result, "simulated": simulated,
                "curve": {"bucket": stored.bucket, "object": stored.name, "bytes": stored.size,
                          "digest": stored.digest, "columns": list(outcome.curve.columns)}}

    async def _guess_bars(self, store: ModelStore, prefix: str, cmd: RunBacktest
                          ) -> tuple[tuple[set[str], set[str]], tuple[dict[str, dict[str, pd.DataFrame]], bool]] | None:
        """The bars the model's metadata.json says it needs, read before its files are checked; None
        when that cannot tell (then they are read once the checked model says which)."""
        try:
            meta = await store.read_json(prefix, "metadata.json")
            syms, tfs = meta.get("symbols"), meta.get("timeframes")
            if not (isinstance(syms, list) and isinstance(tfs, list) and syms and tfs
                    and all(isinstance(x, str) for x in [*syms, *tfs])):
                return None
            symbols = backtest_symbols(cmd.model, cmd.symbols, syms)
            return (set(symbols), set(tfs)), await self._read_bars(symbols, tfs, cmd)
        except Exception:  # whatever it was is met again, and reported, by the read after the files
            return None

    def _load(self, files: dict[str, bytes]) -> TrainedModel:
        import torch

        torch.set_num_threads(self.inference_threads)
        return TrainedModel.from_files(files)

    async def _read_bars(self, symbols: list[str], timeframes: list[str], cmd: RunBacktest
                         ) -> tuple[dict[str, dict[str, pd.DataFrame]], bool]:
        """Every stored bar before `end` (those before `start` warm the indicators up as in training)."""
        assert self.js is not None
        store = BarStore(self.js, self.cache)
        bars: dict[str, dict[str, pd.DataFrame]] = {}
        simulated = False
        for sym in symbols:
            for tf in timeframes:
                stored = await store.load(sym, tf, None, cmd.end)
                if stored.df.empty:
                    raise DataError(f"no {tf} bars for {sym}", hint=f"load them first: ktrdr data load {sym} {tf}")
                bars.setdefault(sym, {})[tf] = stored.df
                simulated = simulated or bool(stored.meta is not None and stored.meta.simulated)
        return bars, simulated

    def cancelled_message(self, op: OperationContext, where: str) -> str:
        return f"Backtest cancelled at {where}" if where else "Backtest cancelled"
