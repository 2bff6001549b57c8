"""Pictures of operations and stored bars (`ktrdr ops plot`, `ktrdr data plot`), and the pure readers
of an operation's events that both the pictures and the web page use.

The readers (`epoch_points`, `segment_timeline`) only walk events and import nothing heavy. Drawing
imports matplotlib lazily, with the Agg backend (no display, no GUI toolkit), so `ktrdr --help` stays
fast and a headless server can draw.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from events.messages import AnyEvent, DataContext, OperationProgress, TrainingContext

if TYPE_CHECKING:
    import pandas as pd

    from ktrdr.data.gaps import Gap

# The per-epoch metrics the trainer reports (ktrdr/training/trainer.py), in drawing order.
LOSS_KEYS = ("train_loss", "val_loss")
ACCURACY_KEYS = ("train_accuracy", "val_accuracy")
# Candles are readable up to about this many bars on one picture; past it, the close line.
MAX_CANDLES = 300
# Gap bands drawn one by one; more than this would only paint the axis solid and take seconds.
MAX_GAP_BANDS = 2000


# ------------------------------------------------------------------------------------------ readers
def epoch_metrics(ev: AnyEvent) -> tuple[int, dict[str, float]] | None:
    """(epoch, metrics) when `ev` is an epoch boundary of a training (TrainingProgressBridge.epoch:
    phase training, batch 0, metrics present); None otherwise."""
    if not isinstance(ev, OperationProgress):
        return None
    ctx = ev.progress.context
    if not isinstance(ctx, TrainingContext) or ctx.batch != 0 or ctx.epoch <= 0 or not ctx.metrics:
        return None
    if ev.progress.phase != "training":
        return None  # the closing `done` update repeats the last metrics in a later phase
    return ctx.epoch, dict(ctx.metrics)


def epoch_points(events: Iterable[AnyEvent]) -> list[tuple[int, dict[str, float]]]:
    """Per-epoch metrics in epoch order. After a resume an epoch can be reported twice: the later
    report wins (it is the run that reached the end)."""
    by_epoch: dict[int, dict[str, float]] = {}
    for ev in events:
        point = epoch_metrics(ev)
        if point is not None:
            by_epoch[point[0]] = point[1]
    return sorted(by_epoch.items())


@dataclass
class SegmentSpan:
    index: int
    start: datetime  # first report about this segment (its fetch began)
    end: datetime | None = None  # stored / no data / failed
    outcome: str = ""  # "stored", "no data", "failed" or "" while in flight
    bars: int = 0  # bars this segment added


@dataclass
class LoadTimeline:
    start: datetime | None = None
    segments: dict[int, SegmentSpan] = field(default_factory=dict)
    bars: list[tuple[datetime, int]] = field(default_factory=list)  # (time, bars fetched so far)
    waits: list[tuple[datetime, float]] = field(default_factory=list)  # (time, seconds of IB pacing wait)
    end: datetime | None = None  # the last event
    title: str = ""

    def wait_spans(self) -> list[tuple[datetime, datetime]]:
        """The pacing waits as time spans, overlaps merged (every progress report during a wait
        repeats it with the time left) and cut at the last event."""
        spans = sorted((t, t + timedelta(seconds=w)) for t, w in self.waits)
        merged: list[tuple[datetime, datetime]] = []
        for a, b in spans:
            if self.end is not None:
                b = min(b, self.end)
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            elif b > a:
                merged.append((a, b))
        return merged


def segment_timeline(events: Iterable[AnyEvent]) -> LoadTimeline:
    """A data load's segments over time from its progress events (DataContext: segment_index,
    bars_fetched cumulative, waiting_s while IB pacing holds the request, state)."""
    tl = LoadTimeline()
    last_bars = 0
    for ev in events:
        if tl.start is None:
            tl.start = ev.ts
        tl.end = ev.ts
        if not isinstance(ev, OperationProgress) or not isinstance(ev.progress.context, DataContext):
            continue
        ctx = ev.progress.context
        if not tl.title and ctx.symbol:
            tl.title = f"{ctx.symbol} {ctx.timeframe} ({ctx.mode} mode){' · simulated' if ctx.source == 'sim' else ''}"
        if ctx.waiting_s > 0:
            tl.waits.append((ev.ts, ctx.waiting_s))
        if ctx.bars_fetched != last_bars:
            tl.bars.append((ev.ts, ctx.bars_fetched))
        i = ctx.segment_index
        if i <= 0:
            last_bars = max(last_bars, ctx.bars_fetched)
            continue
        span = tl.segments.setdefault(i, SegmentSpan(index=i, start=ev.ts))
        if ctx.state in ("stored", "no data", "failed") and span.end is None:
            span.end, span.outcome = ev.ts, ctx.state
            span.bars = max(0, ctx.bars_fetched - last_bars) if ctx.state == "stored" else 0
        last_bars = max(last_bars, ctx.bars_fetched)
    return tl


# ------------------------------------------------------------------------------------------ drawing
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: no display here, and none needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path) -> None:
    fig.tight_layout()
    fig.savefig(out, dpi=110, format="png")
    _pyplot().close(fig)


def plot_training(points: Sequence[tuple[int, dict[str, float]]], out: Path, title: str) -> None:
    """Loss / validation loss and accuracy / validation accuracy per epoch, two panels."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    epochs = [e for e, _ in points]
    for ax, keys, label in ((ax_loss, LOSS_KEYS, "loss"), (ax_acc, ACCURACY_KEYS, "accuracy")):
        for key, style in zip(keys, ("-o", "--s"), strict=True):
            ys = [m.get(key) for _, m in points]
            xs = [e for e, y in zip(epochs, ys, strict=True) if y is not None]
            if xs:
                ax.plot(xs, [y for y in ys if y is not None], style, markersize=4, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
    fig.suptitle(title, fontsize=10)
    _save(fig, out)


def plot_data_load(tl: LoadTimeline, out: Path, title: str) -> None:
    """Each segment as a bar from its first report to stored/no data/failed (labelled with the bars
    it added), IB pacing waits shaded, and the bars fetched so far below, all against seconds since
    the operation was created."""
    plt = _pyplot()
    t0 = tl.start
    assert t0 is not None

    def secs(t: datetime) -> float:
        return (t - t0).total_seconds()

    fig, (ax_seg, ax_bars) = plt.subplots(2, 1, figsize=(11, 6), sharex=True,
                                          gridspec_kw={"height_ratios": [3, 2]})
    colors = {"stored": "tab:blue", "no data": "tab:gray", "failed": "tab:red", "": "tab:olive"}
    last_t = max([secs(s.end or s.start) for s in tl.segments.values()] + [secs(t) for t, _ in tl.bars] + [0.0])
    for seg in sorted(tl.segments.values(), key=lambda s: s.index):
        x0 = secs(seg.start)
        width = max(secs(seg.end) - x0 if seg.end else last_t - x0, last_t * 0.002)
        ax_seg.barh(seg.index, width, left=x0, height=0.7, color=colors.get(seg.outcome, "tab:olive"))
        if seg.bars and len(tl.segments) <= 60:
            ax_seg.text(x0 + width, seg.index, f" {seg.bars:,}", va="center", fontsize=7)
    spans = tl.wait_spans()
    for ax in (ax_seg, ax_bars):
        for a, b in spans:
            ax.axvspan(secs(a), secs(b), color="tab:orange", alpha=0.25, linewidth=0)
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    handles = [Patch(color=c, label=k or "in flight") for k, c in colors.items()
               if any(s.outcome == k for s in tl.segments.values())]
    if spans:
        waited = sum((b - a).total_seconds() for a, b in spans)
        handles.append(Patch(color="tab:orange", alpha=0.25, label=f"waiting for IB pacing ({waited:.1f} s)"))
    if handles:  # above the axes: inside, it would cover the first segments
        ax_seg.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=len(handles),
                      fontsize=8, frameon=False)
    ax_seg.set_ylabel("segment")
    ax_seg.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_seg.invert_yaxis()
    ax_seg.grid(axis="x", alpha=0.3)
    if tl.bars:
        ax_bars.step([0.0] + [secs(t) for t, _ in tl.bars], [0] + [b for _, b in tl.bars], where="post")
    ax_bars.set_ylabel("bars fetched")
    ax_bars.set_xlabel("seconds since the operation was created")
    ax_bars.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    _save(fig, out)


def plot_series(df: pd.DataFrame, gaps: Sequence[Gap], out: Path, title: str, bar_seconds: int) -> None:
    """Candles when there are few bars, the close line otherwise; missing stretches shaded red."""
    import matplotlib.dates as mdates

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 4.8))
    x = mdates.date2num(df.index.to_pydatetime())
    if len(df) <= MAX_CANDLES:
        width = bar_seconds / 86400 * 0.7  # date units are days
        up = (df["close"] >= df["open"]).to_numpy()
        color = ["tab:green" if u else "tab:red" for u in up]
        ax.vlines(x, df["low"], df["high"], color=color, linewidth=0.8)
        body_low = df[["open", "close"]].min(axis=1)
        body = (df["close"] - df["open"]).abs().clip(lower=(df["high"] - df["low"]).max() * 0.002)
        ax.bar(x, body, width, bottom=body_low, color=color)
    else:
        import numpy as np
        import pandas as pd

        # A NaN at each gap's start breaks the line there instead of bridging the missing bars.
        close = pd.concat([df["close"], pd.Series(np.nan, index=pd.DatetimeIndex([g.start for g in gaps]))])
        close = close.sort_index()
        ax.plot(mdates.date2num(close.index.to_pydatetime()), close.to_numpy(), linewidth=0.8, color="tab:blue",
                label="close")
    shown = list(gaps)[:MAX_GAP_BANDS]
    if shown:
        spans = [(mdates.date2num(g.start.to_pydatetime()),
                  mdates.date2num(g.end.to_pydatetime()) - mdates.date2num(g.start.to_pydatetime()))
                 for g in shown]
        # One collection for all gaps, spanning the axis height whatever the prices are.
        more = f", first {MAX_GAP_BANDS} shaded" if len(gaps) > len(shown) else ""
        ax.broken_barh(spans, (0, 1), transform=ax.get_xaxis_transform(), color="tab:red", alpha=0.25,
                       label=f"gaps ({len(gaps):,}{more})")
    if len(df) > MAX_CANDLES or shown:
        ax.legend(loc="upper left", fontsize=8)
    ax.xaxis.set_major_locator(mdates.AutoDateLocator())
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
    ax.set_ylabel("price")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    _save(fig, out)


def plot_progress(events: Sequence[AnyEvent], out: Path, title: str) -> None:
    """Any operation: its percentage over time (the dummy has nothing else to show)."""
    plt = _pyplot()
    t0 = events[0].ts
    pts = [((ev.ts - t0).total_seconds(), ev.progress.percentage) for ev in events
           if isinstance(ev, OperationProgress)]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    if pts:
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post")
    ax.set_ylim(0, 100)
    ax.set_xlabel("seconds since the operation was created")
    ax.set_ylabel("progress %")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    _save(fig, out)


# Points per line on a backtest's picture: a longer curve is thinned (each bucket's last point, and
# the worst drawdown kept), as a 1,000,000-bar line would take seconds to draw for nothing seen.
MAX_CURVE_POINTS = 4000


def thin_indices(n: int, keep: Sequence[int], most: int = MAX_CURVE_POINTS) -> Any:
    """Indices of at most about `most` of n points: each bucket's last, the first, and `keep`."""
    import numpy as np

    if n <= most:
        return np.arange(n)
    step = -(-n // most)
    return np.unique(np.concatenate((np.arange(step - 1, n, step), [0, n - 1], list(keep))))


def plot_backtest(curve: pd.DataFrame, result: dict[str, Any], out: Path, title: str) -> None:
    """A backtest's equity against buy-and-hold over the same bars (top), and the drawdown of each
    from its running peak below, the worst one marked; the figures of both in the legend."""
    import matplotlib.dates as mdates
    import pandas as pd

    from ktrdr.backtest.run import drawdown

    plt = _pyplot()
    capital = float(result.get("capital") or curve["equity"].iloc[0])
    ts = pd.to_datetime(curve["ts"], utc=True)
    eq, bh = curve["equity"].to_numpy("float64"), curve["buy_hold"].to_numpy("float64")
    dd, bh_dd = drawdown(eq, capital), drawdown(bh, capital)
    worst = int(dd.argmin()) if len(dd) else 0
    pick = thin_indices(len(eq), [worst, int(bh_dd.argmin()) if len(bh_dd) else 0])
    x = mdates.date2num(ts.iloc[pick].dt.tz_convert(None).to_numpy())
    s, b = result.get("strategy") or {}, result.get("buy_and_hold") or {}

    def label(name: str, f: dict[str, Any]) -> str:
        ret, sharpe = f.get("total_return"), f.get("sharpe")
        if not isinstance(ret, int | float) or not isinstance(sharpe, int | float):
            return name
        return f"{name}: {ret:+.2%}, Sharpe {sharpe:.2f}, max DD {f.get('max_drawdown', 0.0):.2%}"

    fig, (ax_eq, ax_dd) = plt.subplots(2, 1, figsize=(11, 6.4), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    ax_eq.plot(x, eq[pick], color="tab:blue", linewidth=1.1, label=label("strategy", s))
    ax_eq.plot(x, bh[pick], color="tab:gray", linewidth=1.0, linestyle="--", label=label("buy & hold", b))
    ax_eq.axhline(capital, color="black", linewidth=0.6, alpha=0.5)
    if "position" in curve.columns and len(pick):  # the bars in the market, shaded
        pos = curve["position"].to_numpy("float64")[pick] > 0
        ax_eq.fill_between(x, 0, 1, where=pos, transform=ax_eq.get_xaxis_transform(), step="post",
                           color="tab:blue", alpha=0.08, linewidth=0, label="in the market")
    ax_eq.set_ylabel("equity")
    ax_eq.grid(alpha=0.3)
    ax_eq.legend(loc="upper left", fontsize=8)
    ax_dd.fill_between(x, dd[pick] * 100.0, 0.0, color="tab:blue", alpha=0.35, step="post", label="strategy")
    ax_dd.plot(x, bh_dd[pick] * 100.0, color="tab:gray", linewidth=0.9, linestyle="--", label="buy & hold")
    if len(dd) and dd[worst] < 0:
        at = mdates.date2num(ts.iloc[[worst]].dt.tz_convert(None).to_numpy())[0]
        ax_dd.plot([at], [dd[worst] * 100.0], "v", color="tab:red", markersize=6,
                   label=f"worst {dd[worst]:.2%} ({ts.iloc[worst]:%Y-%m-%d})")
    ax_dd.set_ylabel("drawdown %")
    ax_dd.grid(alpha=0.3)
    ax_dd.legend(loc="lower left", fontsize=8)
    ax_dd.xaxis.set_major_locator(mdates.AutoDateLocator())
    ax_dd.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax_dd.xaxis.get_major_locator()))
    ax_eq.margins(x=0)
    fig.suptitle(title, fontsize=10)
    _save(fig, out)
