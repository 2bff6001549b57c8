"""Renderers: fold an operation's events into a view (ktrdr.ops) and turn the view into one
line of text. The live CLI, `ops watch`, `ops replay` and `ops list` all go through these, so a
replayed operation renders exactly as it did live. Names follow KTRDR's: ProgressRenderer,
DataProgressRenderer, TrainingProgressRenderer.
"""

from __future__ import annotations

from events.messages import BacktestContext, DataContext, DummyContext, TrainingContext
from ktrdr.ops import OperationView

MIN_WAIT_SHOWN_S = 0.1  # shorter pacing waits are not worth a line


def _pct(view: OperationView) -> str:
    return f"{view.percentage:5.1f}%"


class ProgressRenderer:
    """Base: status-aware one-line rendering of an OperationView. A subclass names its `domain` and
    is found by `for_domain` (registered when it is defined)."""

    domain = ""
    _by_domain: dict[str, type[ProgressRenderer]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.domain:
            ProgressRenderer._by_domain[cls.domain] = cls

    def progress_text(self, view: OperationView) -> str:
        return view.message or view.phase or view.status

    def line(self, view: OperationView) -> str:
        if view.status == "queued":
            return f"{view.op_id}: queued, waiting for a worker"
        if view.terminal:
            return self.final(view)
        return f"{self.progress_text(view)} {_pct(view)}"

    def final(self, view: OperationView) -> str:
        elapsed = f" in {view.elapsed_s:.1f} s" if view.elapsed_s is not None else ""
        if view.status == "completed":
            return f"{self.completed_text(view)}{elapsed}"
        if view.status == "cancelled":
            if view.reason_code == "deadline":
                return f"cancelled: {view.reason or 'deadline passed'}{' at ' + view.where if view.where else ''}"
            return view.message or f"Operation cancelled{' at ' + view.where if view.where else ''}"
        if view.status == "failed":
            return f"Operation failed: {view.error}"
        if view.status == "rejected":
            return f"Operation rejected: {view.error}"
        return self.line(view)

    def completed_text(self, view: OperationView) -> str:
        return "Operation completed"

    @staticmethod
    def for_domain(domain: str) -> ProgressRenderer:
        return ProgressRenderer._by_domain.get(domain, ProgressRenderer)()


class DummyProgressRenderer(ProgressRenderer):
    domain = "dummy"

    def progress_text(self, view: OperationView) -> str:
        ctx = view.context
        if isinstance(ctx, DummyContext) and ctx.iterations:
            return f"Dummy operation [{ctx.iteration}/{ctx.iterations}]"
        return super().progress_text(view)

    def completed_text(self, view: OperationView) -> str:
        n = (view.result or {}).get("iterations_completed")
        return f"Dummy operation completed: {n} iterations" if n is not None else "Dummy operation completed"


class DataProgressRenderer(ProgressRenderer):
    domain = "data"

    def progress_text(self, view: OperationView) -> str:
        ctx = view.context
        if not isinstance(ctx, DataContext) or not ctx.symbol:
            return super().progress_text(view)
        text = f"Loading {ctx.symbol} {ctx.timeframe} data ({ctx.mode} mode)"
        if ctx.segment_count:  # segments finished of planned: it only ever goes up
            text += f" [{ctx.segments_done}/{ctx.segment_count}]"
        if ctx.bars_fetched:
            text += f" · {ctx.bars_fetched:,} bars"
        if ctx.waiting_s >= MIN_WAIT_SHOWN_S:
            text += f" · waiting {ctx.waiting_s:.0f} s for IB pacing" if ctx.waiting_s >= 10 else \
                f" · waiting {ctx.waiting_s:.1f} s for IB pacing"
        elif ctx.state and ctx.state not in ("fetching", "waiting for IB pacing") and not ctx.waiting_s:
            text += f" · {ctx.state}"
        if ctx.source == "sim":
            text += " (simulated)"
        return text

    def completed_text(self, view: OperationView) -> str:
        r = view.result or {}
        if not r:
            return "Data load completed"
        if isinstance(r.get("failed"), dict):  # a universe: the parent's verdict names the failed symbols
            failed = r["failed"]
            text = (f"Loaded {len(r.get('completed', []))}/{r.get('symbols', 0)} symbols: "
                    f"{r.get('bars', 0):,} bars stored, {len(failed)} failed")
            return text + "".join(f"\n  {sym}: {why}" for sym, why in list(failed.items())[:50])
        sim = " (simulated data)" if r.get("simulated") else ""
        return (f"Loaded {r.get('symbol')} {r.get('timeframe')} ({r.get('mode')} mode): "
                f"{r.get('bars_added', 0):,} bars added, {r.get('bars_total', 0):,} stored; segments "
                f"{r.get('segments_fetched', 0)}/{r.get('segments_planned', 0)} fetched, "
                f"{r.get('segments_failed', 0)} failed; {_plural(r.get('gaps_found', 0), 'gap')}{sim}")


class TrainingProgressRenderer(ProgressRenderer):
    domain = "training"

    def progress_text(self, view: OperationView) -> str:
        ctx = view.context
        if not isinstance(ctx, TrainingContext) or not ctx.symbols:
            return super().progress_text(view)
        from ktrdr.training.progress import format_training_line  # no torch: safe for the CLI

        if ctx.epoch and ctx.total_epochs and view.phase == "training":
            text = format_training_line(ctx.symbols, ctx.timeframes, ctx.epoch, ctx.total_epochs,
                                        ctx.batch or None, ctx.total_batches if ctx.batch else None,
                                        ctx.model_type or "mlp")
        else:  # the phases around training: the bridge's message says what is happening
            text = view.message or view.phase
        if ctx.device and ctx.device != "cpu":
            text += f" · {ctx.gpu_name or ctx.device}"
        return text

    def completed_text(self, view: OperationView) -> str:
        r = view.result or {}
        tm, test = r.get("training_metrics", {}), r.get("test_metrics", {})
        path = r.get("artifacts", {}).get("model_path", "")
        if isinstance(r.get("leaderboard"), list):  # a sweep
            best = r.get("best") or {}
            metric = best.get(r.get("rank_by", ""))
            shown = f"{metric:.4g}" if isinstance(metric, int | float) else "-"
            return (f"Sweep completed: {r.get('completed')}/{r.get('variants')} variants ({r.get('failed')} failed); "
                    f"best variant {best.get('variant')} {r.get('rank_by')} {shown}, model {best.get('model')}")
        if not tm:
            return "Training completed"
        return (f"Training completed: {tm.get('epochs_completed')} epochs, val_acc "
                f"{tm.get('final_val_accuracy', 0):.3f}, test_acc {test.get('test_accuracy', 0):.3f}; model at {path}")


class BacktestProgressRenderer(ProgressRenderer):
    domain = "backtest"

    def progress_text(self, view: OperationView) -> str:
        ctx = view.context
        if not isinstance(ctx, BacktestContext) or not ctx.bars_total:
            return super().progress_text(view)
        at = f" at {ctx.date:%Y-%m-%d %H:%M}" if ctx.date else ""
        return (f"Backtesting {ctx.model} on {ctx.symbol}{at} [{ctx.bars_done:,}/{ctx.bars_total:,} bars] · equity "
                f"{ctx.equity:,.0f}, drawdown {ctx.drawdown:.1%} (worst {ctx.max_drawdown:.1%}), "
                f"{_plural(ctx.trades, 'trade')}")

    def completed_text(self, view: OperationView) -> str:
        r = view.result or {}
        s, b = r.get("strategy") or {}, r.get("buy_and_hold") or {}
        if not s:
            return "Backtest completed"
        sim = " (simulated data)" if r.get("simulated") else ""
        return (f"Backtest completed: {r.get('model')} total return {s.get('total_return', 0):+.2%} "
                f"(buy & hold {b.get('total_return', 0):+.2%}), Sharpe {s.get('sharpe', 0):.2f}, max drawdown "
                f"{s.get('max_drawdown', 0):.1%}, {_plural(s.get('trades', 0), 'trade')}{sim}")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
