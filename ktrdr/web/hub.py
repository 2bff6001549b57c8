"""The server's side of NATS: one Client connection, every operation kept folded for the list page,
and the fan-out of changes to the browsers' event streams.

Live and stored meet without a gap: the hub subscribes to `ops.>` first, then reads the stored list
(Client.list_operations: the newest `list_limit`, from the operations index), then folds whatever
arrived meanwhile, in order. A page for one operation
gets its own ordered consumer on `ops.<domain>.<op_id>.>` from the first stored event (replay, then
live, like `ktrdr ops watch`), and its first message says when the replay has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js import api as js_api

from events import subjects
from events.codec import DecodeError, decode_event_on
from events.proof import HEADER
from ktrdr.client import Client
from ktrdr.config import Settings
from ktrdr.ops import OperationView, fold_all
from ktrdr.ops.index import MAX_PAGE, Filters
from ktrdr.ops.reader import admit, count_dropped, fold_into
from ktrdr.plotting import epoch_points
from ktrdr.web import MAX_STREAMS, MAX_STREAMS_PER_CLIENT
from ktrdr.web.views import MAX_CURVE_POINTS, OpPage, backtest_json, backtest_result, row_json, sort_key, timeline_row

log = logging.getLogger("ktrdr.web")
# Index summaries one list request reads at most before it answers with what it found and a cursor
# to go on (whole hours: a little more). bench.scale history: 100,000 read in 8.4 s, so about 1 s.
SEARCH_WALK = 10_000

# A browser gets list changes at most this often: a training's batch events would otherwise redraw
# the table dozens of times a second for nobody's benefit.
LIST_PUSH_INTERVAL_S = 0.1
# Events waiting for a slow browser; past this it is dropped and reconnects to a fresh snapshot.
STREAM_QUEUE = 512
# Operations kept in memory for the list (the newest; older ones are still in the OPS stream).
MAX_VIEWS = 20_000
MAX_LEADERBOARD_CURVES = 64  # a sweep's variants whose curves the page overlays, best first: more is a blur


class TooManyStreams(Exception):
    def __init__(self, message: str, *, per_client: bool = False) -> None:
        super().__init__(message)
        self.per_client = per_client  # this client holds its share (the server has room for others)


class Stream:
    """One browser's event stream: a bounded queue of (event name, JSON text); None ends it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue(STREAM_QUEUE + 1)
        self.dropped = False

    def offer(self, name: str, data: dict[str, Any]) -> None:
        if self.dropped:
            return
        if self.queue.qsize() >= STREAM_QUEUE:
            self.end()  # too slow: it reconnects and starts again from a snapshot
            return
        self.queue.put_nowait((name, json.dumps(data, default=str)))

    def end(self) -> None:
        self.dropped = True
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)


class Hub:
    def __init__(self, settings: Settings, *, max_streams: int = MAX_STREAMS, history: int = 200,
                 list_limit: int = 200, per_client: int = MAX_STREAMS_PER_CLIENT) -> None:
        self.settings = settings
        self.max_streams = max_streams
        self.per_client = min(per_client, max_streams)
        self._held: dict[str, int] = {}  # live streams per client
        self.history = history
        self.list_limit = list_limit
        self.client: Client | None = None
        self.views: dict[str, OperationView] = {}
        self._list_streams: set[Stream] = set()
        self._op_streams: set[Stream] = set()
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._buffer: list[tuple[str, bytes, str | None]] | None = None
        self.dropped = 0  # live messages whose body disagreed with their subject (or did not decode)
        self.connected = asyncio.Event()
        self._search_lock = asyncio.Lock()

    # ------------------------------------------------------------------------------- connection
    async def run(self, stop: asyncio.Event, on_first_attach: Callable[[], None] | None = None) -> None:
        """Stay attached to NATS until `stop`: Client gives up after a few failed reconnects (it is
        made for short CLI runs), so a closed connection is replaced by a new one here."""
        flusher = asyncio.create_task(self._push_loop())
        try:
            while not stop.is_set():
                try:
                    async with Client(self.settings, name="ktrdr-web") as client:
                        await self._attach(client)
                        if on_first_attach is not None:
                            on_first_attach()
                            on_first_attach = None
                        # Client offers no closed-callback: look at the connection once a second.
                        while not stop.is_set() and client.nc is not None and not client.nc.is_closed:
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(stop.wait(), 1.0)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # any failure to connect or sync: say so and try again
                    log.warning("ktrdr web: NATS connection lost or refused (%s); retrying", exc)
                finally:
                    self._detach()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
        finally:
            flusher.cancel()
            self._detach()

    async def _attach(self, client: Client) -> None:
        assert client.nc is not None
        self._buffer = []
        await client.nc.subscribe(subjects.OPS_ALL, cb=self._on_live)
        await client.nc.flush()  # the server has the subscription before we read what is stored
        # The newest page from the operations index (O(page), however much history OPS keeps);
        # what arrives from now on is folded in live (older operations stay in OPS and the index).
        views = await client.list_operations(limit=max(self.list_limit, 1))
        self.views = {v.op_id: v for v in views}
        buffered, self._buffer = self._buffer, None
        for subject, data, proof in buffered:
            self._apply(subject, data, proof)
        self._trim()
        self.client = client
        self.connected.set()

    def _detach(self) -> None:
        self.client = None
        self.connected.clear()
        self._buffer = None
        for s in [*self._list_streams, *self._op_streams]:
            s.end()  # their consumers went with the connection; the browsers reconnect

    async def _on_live(self, msg: Msg) -> None:
        proof = msg.headers.get(HEADER) if msg.headers else None
        if self._buffer is not None:
            self._buffer.append((msg.subject, msg.data, proof))
        else:
            self._apply(msg.subject, msg.data, proof)

    def _apply(self, subject: str, data: bytes, proof: str | None = None) -> None:
        known = len(self.views)
        view = fold_into(self.views, subject, data, proof)
        if view is None:  # garbage, or a body its subject does not prove: not ours to show
            self.dropped += 1
            return
        if len(self.views) > known and len(self.views) > MAX_VIEWS * 1.1:
            self._trim()
        self._dirty.add(view.op_id)
        self._wake.set()

    def _trim(self) -> None:
        if len(self.views) > MAX_VIEWS:
            keep = sorted(self.views, key=sort_key)[-MAX_VIEWS:]
            self.views = {k: self.views[k] for k in keep}

    # ------------------------------------------------------------------------------- list page
    def list_snapshot(self) -> dict[str, Any]:
        newest = sorted(self.views.values(), key=lambda v: sort_key(v.op_id))[-self.list_limit:]
        # `limit`: a full snapshot may have older operations behind it (the page then offers "Older")
        return {"rows": [row_json(v) for v in newest], "total": len(self.views), "limit": self.list_limit,
                "now": _now()}

    async def _push_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            rows = [row_json(self.views[i]) for i in dirty if i in self.views]
            if rows:
                payload = {"rows": rows, "total": len(self.views), "now": _now()}
                for s in list(self._list_streams):
                    s.offer("ops", payload)
            await asyncio.sleep(LIST_PUSH_INTERVAL_S)  # coalesce bursts into one push

    @contextlib.asynccontextmanager
    async def list_stream(self, client_key: str = "") -> AsyncIterator[Stream]:
        async with self._slot(self._list_streams, client_key) as stream:
            stream.offer("snapshot", self.list_snapshot())
            yield stream

    # ------------------------------------------------------------------------------- one operation
    async def exists(self, op_id: str) -> bool:
        """Is anything stored for this operation? (the list knows most; the stream knows all)"""
        if op_id in self.views:
            return True
        client = self.client
        if client is None:
            raise ConnectionError("not connected to NATS")
        return await client.exists(op_id)

    @contextlib.asynccontextmanager
    async def op_stream(self, op_id: str, client_key: str = "") -> AsyncIterator[Stream]:
        """Replay then follow one operation: a `snapshot` once the stored events are read (the last
        `history` rows, how many came before, the curves), then one `update` per event."""
        client = self.client
        if client is None:
            raise ConnectionError("not connected to NATS")
        page = OpPage(op_id, self.history)
        async with self._slot(self._op_streams, client_key) as stream:
            caught_up = False

            async def cb(msg: Msg) -> None:
                nonlocal caught_up
                try:
                    ev = decode_event_on(msg.subject, msg.data)
                except DecodeError as exc:  # garbage, or a body its subject does not prove
                    count_dropped(page.view, msg.subject, exc)
                    ev = None
                if ev is not None and ev.op_id == op_id:  # a held event once the holder's signature reaches it
                    proof = msg.headers.get(HEADER) if msg.headers else None
                    for e in admit(page.view, msg.subject, msg.data, proof, ev):
                        update = page.apply(e)
                        if caught_up:
                            stream.offer("update", update)
                if not caught_up and msg.metadata.num_pending == 0:  # the last stored event: show the page
                    caught_up = True
                    stream.offer("snapshot", page.snapshot())

            sub = await client.js.subscribe(subjects.ops(op_id), cb=cb, ordered_consumer=True,
                                            deliver_policy=js_api.DeliverPolicy.ALL)
            try:
                yield stream
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def schedules(self) -> list[dict[str, Any]]:
        """The schedules (`ktrdr schedule list --json`), for the list page."""
        client = self.client
        if client is None:
            raise ConnectionError("not connected to NATS")
        from ktrdr.transport import schedules

        return await schedules.summaries(client.js)

    async def search(self, filters: Filters, before: str | None, limit: int) -> dict[str, Any]:
        """One page of the list from the operations index (the read `ktrdr ops list` makes): the
        newest `limit` rows kept by `filters` made before the cursor, and the cursor of the page
        before it (None at the oldest). A search that keeps few rows reads at most about
        SEARCH_WALK summaries per call; `searched_to` then says how far back it looked."""
        client = self.client
        if client is None:
            raise ConnectionError("not connected to NATS")
        async with self._search_lock:  # the client keeps the page's cursor and notes on itself
            views = await client.list_operations(limit=limit, filters=filters, before=before, max_walk=SEARCH_WALK)
            more, note, searched_to = client.next_before, client.index_note, client.searched_to
        return {"rows": [row_json(v) for v in views], "next_before": more, "note": note, "searched_to": searched_to,
                "now": _now()}

    async def timeline(self, op_id: str) -> dict[str, Any]:
        """A workflow's children for its timeline, oldest first, from the operations index (the read
        `ktrdr ops list --parent ID` makes): at most MAX_PAGE of them."""
        client = self.client
        if client is None:
            raise ConnectionError("not connected to NATS")
        async with self._search_lock:
            kids = await client.list_operations(limit=MAX_PAGE, filters=Filters(parent=op_id))
            more = client.next_before is not None
        return {"children": [timeline_row(v) for v in kids], "more": more, "now": _now()}

    async def curves(self, op_id: str) -> dict[str, Any]:
        """A training's per-epoch metrics from its stored events (ktrdr.plotting.epoch_points, what
        `ktrdr ops plot` draws), at most MAX_CURVE_POINTS, with what its list row shows."""
        client = self.client
        if client is None:
            raise ConnectionError("not connected to NATS")
        events = await client.events(op_id)
        view = fold_all(events)
        points = epoch_points(events)[:MAX_CURVE_POINTS]
        return {**row_json(view), "points": [[e, m] for e, m in points]}

    async def events_json(self, op_id: str) -> list[dict[str, Any]]:
        """Every stored event of the operation, as the wire has them (msgspec's JSON builtins), oldest first."""
        client = self.client
        if client is None:
            raise ConnectionError("not connected to NATS")
        read = await client.events(op_id)
        return [msgspec.to_builtins(ev) for ev in read]

    async def backtest(self, op_id: str) -> tuple[int, dict[str, Any]]:
        """A completed backtest's figures and curve (ktrdr.web.views.backtest_json), for a backtest
        operation or a training workflow that ran one; 404 with a note when there is none."""
        client = self.client
        if client is None:
            raise ConnectionError("not connected to NATS")
        view = await client.view(op_id)  # the log: a row from the index carries no result
        result = backtest_result(view)
        name = ((result or {}).get("curve") or {}).get("object")
        if result is None or not isinstance(name, str):
            return 404, {"note": f"{op_id} has no completed backtest to show"}
        from ktrdr.backtest.run import read_curve
        from ktrdr.errors import KtrdrError
        from ktrdr.training.model_store import ModelStore

        try:
            data = await ModelStore(client.js).read_backtest(name)
            if data is None:
                return 404, {"note": f"the equity curve MODELS/{name} is no longer stored"}
            curve = await asyncio.to_thread(read_curve, data)
            bt_id = op_id if view.domain == "backtest" else str(result.get("op_id") or op_id)
            return 200, await asyncio.to_thread(backtest_json, bt_id, result, curve)
        except KtrdrError as exc:
            return 404, {"note": f"{op_id}: {exc}"}

    async def leaderboard(self, op_id: str) -> tuple[int, dict[str, Any]]:
        """A completed sweep's leaderboard (its result's rows, as `ops show` prints them) and each
        completed variant's validation loss per epoch (its training child's history), for the page's
        sortable table and overlaid curves; 404 with a note for any other operation."""
        client = self.client
        if client is None:
            raise ConnectionError("not connected to NATS")
        view = await client.view(op_id)
        rows = (view.result or {}).get("leaderboard") if view.status == "completed" else None
        if not isinstance(rows, list):
            return 404, {"note": f"{op_id} has no completed sweep to show"}
        curves: dict[str, list[float | None]] = {}
        for row in rows[:MAX_LEADERBOARD_CURVES]:
            if not isinstance(row, dict) or row.get("status") != "completed" or not subjects.is_op_id(row.get("op_id")):
                continue
            child = row["op_id"]
            history = ((await client.view(child)).result or {}).get("training_metrics", {}).get("history") or []
            curves[str(row.get("variant"))] = [h.get("val_loss") if isinstance(h, dict) else None for h in history]
        r = view.result or {}
        return 200, {"op_id": op_id, "rank_by": r.get("rank_by"), "variants": r.get("variants"),
                     "completed": r.get("completed"), "rows": rows, "curves": curves}

    async def cancel(self, op_id: str) -> tuple[int, dict[str, Any]]:
        """Publish the cancel (requested_by "web"); a finished operation is left as it is, as in the CLI."""
        client = self.client
        if client is None:
            raise ConnectionError("not connected to NATS")
        # The list's fold has every lifecycle event: enough to know whether it is finished, without
        # replaying a long operation's whole history for one click.
        view = self.views.get(op_id) or await client.view(op_id)
        if view.events == 0:
            return 404, {"ok": False, "note": f"no operation {op_id} is stored"}
        if view.terminal:
            return 200, {"ok": False, "note": f"{op_id} is already {view.status}; nothing to cancel"}
        await client.cancel(op_id, reason="cancel from the web page", requested_by="web")
        return 202, {"ok": True, "note": f"cancel requested for {op_id}"}

    # ------------------------------------------------------------------------------- bounds
    @contextlib.asynccontextmanager
    async def _slot(self, group: set[Stream], client_key: str) -> AsyncIterator[Stream]:
        """A stream slot: at most max_streams in all and per_client for one client (issue 18, F15: one
        local process held every slot)."""
        if len(self._list_streams) + len(self._op_streams) >= self.max_streams:
            raise TooManyStreams(f"{self.max_streams} live pages are open; close one and reload")
        if self._held.get(client_key, 0) >= self.per_client:
            raise TooManyStreams(f"this client has {self.per_client} live pages open; close one and reload",
                                 per_client=True)
        stream = Stream()
        group.add(stream)
        self._held[client_key] = self._held.get(client_key, 0) + 1
        try:
            yield stream
        finally:
            group.discard(stream)
            if (left := self._held.pop(client_key, 1) - 1) > 0:
                self._held[client_key] = left

    def close_streams(self) -> None:
        for s in [*self._list_streams, *self._op_streams]:
            s.end()


def _now() -> str:
    return datetime.now(UTC).isoformat()
