"""The active orchestrator's indexer: it keeps the operations index (KV OPS_INDEX, ktrdr.ops.index)
current by folding the lifecycle events OPS stores, and rebuilds it from OPS on `ktrdr ops reindex`.

It reads OPS through its own consumer (subjects.OPS_INDEX_CONSUMER, lifecycle events only), made at
each activation to start right after the index's watermark (`meta.applied`). A fetched batch is
folded into the views of the operations it touches, their summaries are stored (compare-and-set:
one that folds a later OPS sequence wins), then the watermark, then the batch is acked. A kill -9
anywhere between an event stored in OPS and its summary is repaired by the next activation reading
from the watermark again; a summary already stored is not written back older (its `seq`).

An operation it has no view of (one made before this activation) is read from OPS once, its
lifecycle events only (a few direct gets), and later messages it already folded are skipped by
sequence. Views are bounded (MAX_VIEWS, oldest out), ended ones included (see apply).

Test hook: KTRDR_TEST_CRASH=after-event-before-index makes the process exit at once (os._exit(9),
like kill -9) when a fetched batch holds a terminal event, before any of the batch is indexed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from events import subjects
from events.codec import DecodeError, decode, decode_event_on, encode
from events.messages import IndexMark, OperationCreated, OperationsReindexed, OpSummary, ReindexOperations
from events.proof import HEADER
from ktrdr.ops.fold import fold
from ktrdr.ops.index import HOUR_PREFIX, LIVE_PREFIX, TIME_PREFIX, hour_marker, summarize
from ktrdr.ops.reader import admit, latest_progress, read_views, read_views_of
from ktrdr.ops.search import word_keys
from ktrdr.ops.view import TERMINAL, OperationView
from ktrdr.transport import opsindex
from ktrdr.transport.opsindex import IndexMissing, IndexWriter, read_keys, read_mark, scan
from ktrdr.transport.replay import walk_from, walk_tail
from ktrdr.transport.streams import ensure_streams

if TYPE_CHECKING:
    from actors.orchestrator import Orchestrator

BATCH = 512  # lifecycle events fetched and indexed at once
REBUILD_AFTER_MARK_MAX = 100_000  # lifecycle events past the index's watermark a rebuild follows by op
PROGRESS_READS = 64  # ended operations' last progress read at once (direct gets)
MAX_VIEWS = 20_000  # views kept between batches, ended ones included (an evicted one is read again)
CRASH_POINT = "after-event-before-index"  # KTRDR_TEST_CRASH (Settings.test_crash)
_TERMINAL_NAMES = frozenset(("completed", "failed", "cancelled", "rejected"))


def _op_of(subject: str) -> tuple[str, str] | None:
    parsed = subjects.parse_ops_subject(subject)
    if parsed is None or not subjects.is_op_id(parsed[1]):
        return None
    return parsed[1], parsed[2]


class Indexer:
    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch
        self.views: collections.OrderedDict[str, tuple[OperationView, int]] = collections.OrderedDict()
        self.writer: IndexWriter | None = None
        self.sub: JetStreamContext.PullSubscription | None = None
        self.applied = 0  # the watermark: every lifecycle event up to this OPS sequence is indexed
        self.loaded = 0  # operations read from OPS because no view of them was held
        self.unlived: set[str] = set()  # created in the batch being indexed: no live key to remove
        self.lock = asyncio.Lock()  # a batch or a reindex at a time
        self.crash = orch.settings.test_crash == CRASH_POINT

    async def start(self) -> None:
        """Bind the bucket and follow OPS from the watermark (called in Succession.activate)."""
        js = self.orch.js
        assert js is not None
        self.writer = IndexWriter(await js.key_value(subjects.OPS_INDEX_BUCKET), js)
        try:
            self.applied = (await read_mark(js)).seq
        except IndexMissing:  # a new bucket (or a stack from before the index): built from the whole log
            self.applied = 0
            await self._mark(0, force=True)  # readers use it at once (and the log past it while it builds)
            await self.writer.mark_words()  # built by us from empty: every summary gets its words
        await self._follow()
        self.orch.succession.tasks.append(self.orch.spawn(self.loop(), name=f"{self.orch.id}-index"))

    async def _follow(self) -> None:
        js = self.orch.js
        assert js is not None
        if self.sub is not None:  # the previous follow's subscription
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
            with contextlib.suppress(ValueError):
                self.orch.succession.subs.remove(self.sub)
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(subjects.STREAM_OPS, subjects.OPS_INDEX_CONSUMER)
        await js.add_consumer(subjects.STREAM_OPS, js_api.ConsumerConfig(
            name=subjects.OPS_INDEX_CONSUMER, durable_name=subjects.OPS_INDEX_CONSUMER,
            filter_subjects=subjects.lifecycle_filters(), ack_policy=js_api.AckPolicy.ALL, ack_wait=30.0,
            max_ack_pending=BATCH * 4, deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.applied + 1, inactive_threshold=50.0))
        self.sub = await js.pull_subscribe_bind(durable=subjects.OPS_INDEX_CONSUMER, stream=subjects.STREAM_OPS)
        self.orch.succession.subs.append(self.sub)  # stopped with what the activation set up (_undo)
        self.views.clear()

    async def loop(self) -> None:
        while not self.orch.stopping:
            try:
                assert self.sub is not None
                msgs = await self.sub.fetch(BATCH, timeout=1.0)
            except TimeoutError:
                with contextlib.suppress(Exception):
                    await self._advance_idle()
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the server away, a consumer gone (the bucket deleted): follow again
                self.orch.log.warning("operations index: fetch failed (%s: %s); following OPS again",
                                      type(exc).__name__, exc)
                await asyncio.sleep(1.0)
                with contextlib.suppress(Exception):
                    await self._follow()
                continue
            try:
                async with self.lock:
                    await self.apply(msgs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # not acked: redelivered after ack_wait, or read again from the mark
                self.orch.log.warning("operations index: a batch not indexed (%s: %s)", type(exc).__name__, exc)
                await asyncio.sleep(1.0)
                with contextlib.suppress(Exception):
                    await self._follow()

    async def _advance_idle(self) -> None:
        """Nothing to index: move the watermark to OPS's last message, so that what readers read
        past it (progress, the newest events) stays short. Safe: the stream's last sequence is read
        first; a consumer then with nothing pending or unacked has indexed every lifecycle event
        up to it."""
        js = self.orch.js
        assert js is not None
        last = (await js.stream_info(subjects.STREAM_OPS)).state.last_seq
        if last <= self.applied:
            return
        info = await js.consumer_info(subjects.STREAM_OPS, subjects.OPS_INDEX_CONSUMER)
        if not info.num_pending and not info.num_ack_pending:
            async with self.lock:
                await self._mark(last)

    async def apply(self, msgs: list[Msg]) -> None:
        """Fold a batch into views, store the summaries it changed, then the watermark, then ack."""
        if not msgs:
            return
        if self.crash and any((p := _op_of(m.subject)) is not None and p[1] in _TERMINAL_NAMES for m in msgs):
            os._exit(9)  # the test hook (module docstring): the events are stored, nothing of them indexed
        touched: dict[str, OperationView] = {}
        last = self.applied
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            last = max(last, seq)
            if seq <= self.applied or (parsed := _op_of(msg.subject)) is None:
                continue
            op_id, name = parsed
            if op_id not in self.views and name != OperationCreated.name:
                # made before we followed OPS: its lifecycle events from the log, this one included
                view, upto = await self.read_one(op_id)
                self.loaded += 1
                self.views[op_id] = (view, upto)
                touched[op_id] = view
                continue
            view = self._view(op_id, seq)
            if view is None:
                continue
            if name == OperationCreated.name and op_id not in self.views:
                self.unlived.add(op_id)  # born under this indexer: no live key until it writes one
            try:
                ev = decode_event_on(msg.subject, msg.data)
            except DecodeError:
                continue  # nobody's event: the fold would drop it too
            before = summarize(view) if op_id in self.views else None
            for e in admit(view, msg.subject, msg.data, msg.headers.get(HEADER) if msg.headers else None, ev):
                fold(view, e)
            self.views[op_id] = (view, seq)
            if before is None or summarize(view) != before:
                touched[op_id] = view  # (an event that changed nothing, a dropped forgery, writes nothing)
        await self._last_progress(touched.values())
        await self._store(touched)
        await self._mark(last)
        await msgs[-1].ack()
        # Ended views stay (the oldest out past MAX_VIEWS): an event for an ended operation (a repeat,
        # a forgery) then folds into its held view and writes nothing, where a view dropped at its end
        # was read again from the log for each such event (a walk of OPS from its first sequence: under
        # a flood of forgeries naming an ended operation, one full walk per message).
        while len(self.views) > MAX_VIEWS:
            self.views.popitem(last=False)

    def _view(self, op_id: str, seq: int) -> OperationView | None:
        """The view to fold the event at `seq` into (a new one for a creation); None when that
        event is folded already."""
        held = self.views.get(op_id)
        if held is None:
            return OperationView(op_id=op_id)
        self.views.move_to_end(op_id)
        return None if seq <= held[1] else held[0]

    async def read_one(self, op_id: str) -> tuple[OperationView, int]:
        """One operation's view from its stored lifecycle events, and the last sequence folded."""
        assert self.orch.js is not None
        view, upto = OperationView(op_id=op_id), 0
        async with contextlib.aclosing(walk_from(self.orch.js, subjects.lifecycle_filters(op_id), 1)) as walk:
            async for seq, subject, data, proof in walk:
                _fold_raw(view, subject, data, proof)
                upto = seq
        return view, upto

    async def _last_progress(self, views: Iterable[OperationView]) -> None:
        """How far each ended operation got, for its list row: one direct get of its last progress
        message at its terminal event (progress is not among the lifecycle events followed; a
        completed one is at 100 %, a rejected one never ran)."""
        assert self.orch.js is not None
        todo = [v for v in views if v.terminal and v.status not in ("completed", "rejected")]
        for i in range(0, len(todo), PROGRESS_READS):
            await asyncio.gather(*(latest_progress(self.orch.js, v) for v in todo[i:i + PROGRESS_READS]))

    async def _store(self, touched: dict[str, OperationView]) -> None:
        assert self.writer is not None
        self.orch.leadership.epoch()  # type: ignore[union-attr]  # NotLeader: a stale one writes nothing
        summaries = [summarize(v, self.views[o][1]) for o, v in touched.items()
                     if v.created_at is not None or v.terminal]
        await self.writer.file_words(summaries)  # before the summaries: a stored one always has its words
        await self.writer.put_all(summaries, without_live=self.unlived)
        for s in summaries:
            self.unlived.discard(s.op_id)  # ended (nothing to remove) or its live key written now

    async def _mark(self, seq: int, *, force: bool = False) -> None:
        assert self.writer is not None and self.orch.leadership is not None
        if seq > self.applied or force:
            await self.writer.mark(IndexMark(seq=seq, epoch=self.orch.leadership.epoch(), actor=self.orch.id))
            self.applied = seq

    # ------------------------------------------------------------------ ops reindex
    async def on_reindex(self, msg: Msg) -> None:
        """Answer `ktrdr ops reindex` (a request on subjects.REINDEX) with what the rebuild did."""
        try:
            decode(msg.data, ReindexOperations)
        except DecodeError as exc:
            await msg.respond(encode(OperationsReindexed(error=f"not a reindex request: {exc}"[:2000])))
            return
        try:
            out = await self.reindex()
        except Exception as exc:
            self.orch.log.warning("ops reindex failed: %s: %s", type(exc).__name__, exc)
            out = OperationsReindexed(error=f"{type(exc).__name__}: {exc}"[:2000])
        await msg.respond(encode(out))

    async def reindex(self) -> OperationsReindexed:
        """Rebuild the index from OPS: read every lifecycle event once, write every operation's
        summary, remove what no stored operation is behind, set the watermark, follow on from it."""
        js = self.orch.js
        assert js is not None
        async with self.lock:
            started = time.monotonic()
            await ensure_streams(js, self.orch.settings, upgrade=True)  # the bucket back, if it was deleted
            self.writer = IndexWriter(await js.key_value(subjects.OPS_INDEX_BUCKET), js)
            views: dict[str, tuple[OperationView, int]] = {}
            events = top = 0
            async with contextlib.aclosing(walk_from(js, subjects.lifecycle_filters(), 1)) as walk:
                async for seq, subject, data, proof in walk:
                    events, top = events + 1, seq
                    if (parsed := _op_of(subject)) is None:
                        continue
                    view = views[parsed[0]][0] if parsed[0] in views else OperationView(op_id=parsed[0])
                    _fold_raw(view, subject, data, proof)
                    views[parsed[0]] = (view, seq)
            await self._last_progress(v for v, _s in views.values())
            summaries = [summarize(v, s) for v, s in views.values() if v.created_at is not None or v.terminal]
            had_live = {k[len(LIVE_PREFIX):] for k, _v in await read_keys(js, f"{LIVE_PREFIX}*")}
            await self.writer.file_words(summaries)
            await self.writer.put_all(summaries, without_live={s.op_id for s in summaries} - had_live)
            kept = {s.op_id for s in summaries}
            live = {s.op_id for s in summaries if s.status not in TERMINAL}
            hours = {hour_marker(o) for o in kept}
            gone = [(k, v) for k, v in await scan(js, f"{TIME_PREFIX}>") if k.rsplit(".", 1)[-1] not in kept]
            stale = [k for k, _v in gone]
            stale += [k for _k, v in gone if (old := _summary_or_none(v)) is not None for k in word_keys([old])]
            stale += [LIVE_PREFIX + o for o in had_live - kept]
            stale += [k for k, _v in await read_keys(js, f"{HOUR_PREFIX}*") if k not in hours]
            for k in stale:
                await self.writer.remove(k)
            await self._mark(top, force=True)
            await self.writer.mark_words()  # every summary stored now has its words
            await self._follow()
            self.orch.log.info("ops reindex: %d operations (%d live) from %d lifecycle events, %d keys removed, "
                               "in %.2f s", len(summaries), len(live), events, len(stale), time.monotonic() - started)
            return OperationsReindexed(operations=len(summaries), live=len(live),
                                       removed=sum(1 for k in stale if k.startswith(TIME_PREFIX)),
                                       events=events, seq=self.applied)


def _summary_or_none(data: bytes) -> OpSummary | None:
    try:
        return decode(data, OpSummary)
    except DecodeError:
        return None


def _fold_raw(view: OperationView, subject: str, data: bytes, proof: bytes | None) -> None:
    try:
        ev = decode_event_on(subject, data)
    except DecodeError:
        return
    if ev.op_id != view.op_id:
        return
    for e in admit(view, subject, data, proof, ev):
        fold(view, e)


async def live_views(js: JetStreamContext, log: logging.Logger) -> dict[str, OperationView]:
    """The views an orchestrator's rebuild needs: with the operations index, those of its live
    operations, of the operations with events after its watermark (it lags, or an orchestrator died
    before indexing them), and of live workflows' children; only their lifecycle events are read.
    Without one (a stack from before it, or an index far behind) every stored lifecycle event."""
    try:
        mark = await read_mark(js)
        ids = {s.op_id for s in await opsindex.live(js)}
        after = 0
        async with contextlib.aclosing(walk_tail(js, mark.seq + 1)) as walk:
            async for _seq, subject, _data, _proof in walk:
                if subjects.is_lifecycle(subject) and (parsed := _op_of(subject)) is not None:
                    ids.add(parsed[0])
                    after += 1
                    if after > REBUILD_AFTER_MARK_MAX:
                        raise IndexMissing(f"the operations index is {after}+ events behind")
    except IndexMissing as exc:
        log.info("rebuilding from every stored lifecycle event: %s", exc)
        return await read_views(js)
    views = (await read_views_of(js, ids)).views
    kids = {c for v in views.values() if not v.terminal for c in v.children} - set(views)
    views.update((await read_views_of(js, kids)).views)
    return views
