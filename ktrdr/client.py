"""The client side of the wire: what the CLI, the web page (and any Python program) use to submit
commands, follow an operation live or from its stored record, list operations and cancel them.

Watching starts an ordered consumer on `ops.<domain>.<op_id>.>` from the first stored event, so a
client sees the same sequence whether it attaches before, during or after the operation: replay
first, then live, through the same fold. A cli or observer key makes only ephemeral consumers on OPS
(they go when nobody reads them); a cancel is stored in OPS_CANCELS (events.subjects). The URL is given (or NATS_URL):
opening a connection never starts anything; the CLI resolves the embedded stack's URL before it gets
here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from events import roles, subjects
from events.codec import DecodeError, decode, decode_event_on, decode_heartbeat, encode
from events.messages import (
    AnyEvent,
    CancelOperation,
    Command,
    Heartbeat,
    OperationCreated,
    OperationRejected,
    OperationsReindexed,
    OpSummary,
    ReindexOperations,
    WireCancelReason,
)
from events.proof import HEADER
from ktrdr.config import Settings
from ktrdr.errors import KtrdrError
from ktrdr.ops import TERMINAL, OperationView, fold
from ktrdr.ops.index import Filters, before_key, hour_of, hour_start, hours_to_walk, page, row_view, summarize
from ktrdr.ops.reader import (
    collect_views,
    latest_progress,
    proven_events,
    read_proven,
    read_view,
    read_views_of,
)
from ktrdr.ops.search import words
from ktrdr.transport import connect, ensure_streams, last_message, opsindex, publish
from ktrdr.transport.lastvalues import live_kv_values
from ktrdr.transport.publish import retrying
from ktrdr.transport.replay import ReadEvents, consumers_capped, read_events, walk_tail

# Operations with lifecycle events stored after the index's watermark are read from the log (the
# index lags the log by a batch); more than this many means the index is being built: read the log.
FRESH_MAX = 2000
VIEWS_PER_READ = 32  # operations whose lifecycle events one read (one consumer) folds


class NoServerError(KtrdrError):
    code = "no_server"


class NotReadyError(KtrdrError):
    code = "not_ready"


class Client:
    def __init__(self, settings: Settings, *, url: str | list[str] | None = None, name: str = "ktrdr-cli",
                 reconnect_attempts: int = 5, ready_roles: list[str] | None = None,
                 ready_timeout: float = 60.0) -> None:
        self.settings = settings
        self.url = url or settings.nats_url
        self.name = name
        self.reconnect_attempts = reconnect_attempts
        self.ready_roles = ready_roles  # wait for these actors (and the streams) before use
        self.ready_timeout = ready_timeout
        self.nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self.on_disconnect: Callable[[], None] | None = None
        self.on_reconnect: Callable[[], None] | None = None
        self.next_before: str | None = None  # the cursor list_operations printed for the page before
        self.dropped = 0  # messages the last list_operations dropped (not events of the operation named)
        self.index_note: str | None = None  # why the last list_operations read the log, not the index
        self.index_read = 0  # summaries the last list_operations read from the index (hours walked: all of theirs)
        self.ops_read = 0  # operations the last list_operations read from OPS (the index's rows: none)
        self._from_index: set[str] = set()  # the last page's rows made from their summaries alone

    async def __aenter__(self) -> Client:
        if not self.url:
            raise NoServerError("no NATS server given", hint="set NATS_URL, or run `ktrdr up`")

        async def disconnected() -> None:
            # nats-py calls this on our own close too (the status is CLOSED by then): not a lost connection
            if self.on_disconnect is not None and not (self.nc is not None and self.nc.is_closed):
                self.on_disconnect()

        async def reconnected() -> None:
            if self.on_reconnect is not None:
                self.on_reconnect()

        async def error(_exc: Exception) -> None:
            pass  # reconnect attempts are reported through on_disconnect/on_reconnect, not tracebacks

        self.nc = await connect(self.url, self.settings, self.name, role=self.settings.role or roles.CLI,
                                max_reconnect_attempts=self.reconnect_attempts,
                                disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error)
        self._js = self.nc.jetstream()
        if self.ready_roles is not None:
            try:
                await self.wait_ready(self.ready_roles, self.ready_timeout)
            except BaseException:
                await self.__aexit__(None, None, None)
                raise
        return self

    async def wait_ready(self, roles: list[str], timeout: float) -> None:
        """Until the streams exist and every role in `roles` has a live actor; NotReadyError naming
        what did not come up otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        missing, streams_ok = list(roles), False
        while True:
            try:
                for name in subjects.STREAMS:
                    await self.js.stream_info(name)
                streams_ok = True
                alive = {hb.role for hb in await self.live_actors()}
                missing = [r for r in roles if r not in alive]
            except Exception:
                streams_ok = False
            if streams_ok and not missing:
                return
            if loop.time() > deadline:
                what = (f"actor(s) {', '.join(missing)} did not announce themselves" if streams_ok
                        else "the streams were not created (is the orchestrator running?)")
                log_dir = self.settings.log_dir
                raise NotReadyError(f"{what} within {timeout:g} s", hint=f"see {log_dir / 'actors.log'}")
            await asyncio.sleep(0.1)

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self.nc is not None:
            # flush + close rather than drain: drain can wait on subscriptions nobody reads any more
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.flush(), 2.0)
            with contextlib.suppress(Exception):
                await self.nc.close()

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "use `async with Client(...)`"
        return self._js

    @property
    def closed(self) -> bool:
        return self.nc is None or self.nc.is_closed

    async def ensure_streams(self) -> list[str]:
        return await ensure_streams(self.js, self.settings)

    async def live_actors(self) -> list[Heartbeat]:
        """The last heartbeat of every live actor (KV bucket ACTORS; an entry expires with its actor)."""
        try:
            values = await live_kv_values(self.js, subjects.ACTORS_BUCKET)
        except NotFoundError:  # not provisioned yet (no KV_ACTORS stream): nobody has announced
            return []
        beats = []
        for value in values.values():
            with contextlib.suppress(DecodeError):
                beats.append(decode_heartbeat(value))
        return beats

    async def submit(self, cmd: Command) -> None:
        """Publish a command (stored in CMD; a retried publish of the same op is stored once). While
        tracing is on (ktrdr/tracing.py) it is the trace's root span, its traceparent in the headers."""
        from ktrdr import tracing  # here, not at the top: a verb that only reads starts without it

        subject = subjects.command(cmd)
        if not tracing.setup("ktrdr-cli", self.settings.home):
            await publish(self.js, subject, encode(cmd), subjects.command_msg_id(cmd.op_id))
            return
        with tracing.span(f"command {subject}", cmd.op_id):
            await publish(self.js, subject, encode(cmd), subjects.command_msg_id(cmd.op_id),
                          headers=tracing.inject(None))

    async def cancel(self, op_id: str, reason: str = "cancel requested", requested_by: str = roles.CLI,
                     code: WireCancelReason = "user") -> None:  # `user`: a client's cancel is always one
        """Record a cancel on ops.<domain>.<op_id>.cancel, whatever state the operation is in (even
        before it exists: the orchestrator honours it when it creates the operation)."""
        cancel = CancelOperation(op_id=op_id, reason=reason, reason_code=code, requested_by=requested_by)
        await publish(self.js, subjects.cancel(op_id), encode(cancel), subjects.user_cancel_msg_id(op_id))

    async def events(self, op_id: str) -> ReadEvents:
        """The operation's stored events (those its subjects prove; `dropped` counts the others)."""
        return await read_proven(self.js, op_id)

    async def view(self, op_id: str) -> OperationView:
        """The fold of the operation's stored events, folded as they arrive (no list of them); a
        message whose body disagrees with its subject is dropped and counted in `view.dropped`."""
        return await read_view(self.js, op_id)

    async def exists(self, op_id: str) -> bool:
        """Whether the orchestrator has recorded the operation (created or rejected) — one read."""
        for name in (OperationCreated.name, OperationRejected.name):
            subject = subjects.ops(op_id, name)
            raw = await last_message(self.js, subject)
            with contextlib.suppress(DecodeError):
                if raw is not None and decode_event_on(subject, raw):
                    return True
        return False

    async def watch(
        self,
        op_id: str,
        on_event: Callable[[AnyEvent, OperationView], None],
        *,
        until_terminal: bool = True,
        stop: asyncio.Event | None = None,
        idle_timeout: float | None = None,
    ) -> OperationView:
        """Replay the operation's stored events, then follow it live, calling on_event after each
        fold. Returns the view when the operation is terminal (or `stop` is set, or nothing arrived
        for idle_timeout seconds)."""
        view = OperationView(op_id=op_id)
        done = stop or asyncio.Event()
        finished = asyncio.Event()
        activity = asyncio.Event()

        async def cb(msg: Msg) -> None:
            activity.set()
            proof = msg.headers.get(HEADER) if msg.headers else None
            # garbage or a forgery on an ops subject (counted in view.dropped / unproven): not rendered;
            # a held event waiting for the holder's signature comes with the one that brings it
            for ev in proven_events(view, msg.subject, msg.data, proof):
                fold(view, ev)
                on_event(ev, view)
            if until_terminal and view.terminal:
                finished.set()

        sub = await self._follow(subjects.ops(op_id), cb)
        waiters = [asyncio.ensure_future(finished.wait()), asyncio.ensure_future(done.wait())]
        try:
            while not (finished.is_set() or done.is_set()):
                activity.clear()
                await asyncio.wait(waiters, timeout=idle_timeout, return_when=asyncio.FIRST_COMPLETED)
                if idle_timeout is not None and not activity.is_set():
                    break
        finally:
            for w in waiters:
                w.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return view

    async def _follow(self, subject: str, cb: Callable[[Msg], Awaitable[None]]) -> Any:
        """Every stored message on `subject` in order, then the live ones: an ordered consumer; where OPS
        has all the consumers it may have (a key holds them all), a core subscription first (held
        back), the stored messages by direct gets, then what the subscription saw that the read did
        not, then live. Returns what to unsubscribe."""
        try:
            return await retrying(lambda: self.js.subscribe(subject, stream=subjects.STREAM_OPS, cb=cb,
                                                            ordered_consumer=True,
                                                            deliver_policy=js_api.DeliverPolicy.ALL))
        except Exception as exc:
            if not consumers_capped(exc):
                raise
        assert self.nc is not None
        held: list[Msg] | None = []

        async def live(msg: Msg) -> None:
            if held is not None:
                held.append(msg)
            else:
                await cb(msg)

        sub = await self.nc.subscribe(subject, cb=live)
        for _ in range(2):  # the second PING goes out behind the SUB: the server holds it (tests/helpers.subscribed)
            await self.nc.flush()
        stored: list[tuple[str, bytes, bytes | None]] = []
        await read_events(self.js, [subject], lambda s, d, p: stored.append((s, d, p)), proofs=True)
        for s, d, p in stored:  # with its holder proof: the fold counts a held event only proven
            await cb(Msg(self.nc, subject=s, data=d, headers={HEADER: p.decode()} if p is not None else None))
        seen = {(s, d) for s, d, _ in stored}
        while held:  # what arrived meanwhile, less what the read had stored already; then live
            batch, held = held, []
            for msg in batch:
                if (msg.subject, msg.data) not in seen:
                    await cb(msg)
        held = None
        return sub

    async def list_operations(self, *, limit: int | None = None, filters: Filters | None = None,
                              before: str | None = None, max_walk: int | None = None) -> list[OperationView]:
        """Stored operations by creation time, oldest first (the newest `limit` kept by `filters`,
        made before the `before` cursor), from their lifecycle events and the last progress each
        reported. `self.next_before`: the cursor of the page before this one (None at the oldest).

        From the operations index (ktrdr.transport.opsindex): the hours that may hold the page,
        newest first, until it is full, plus the operations with events after the index's watermark
        read from the log; then the page's operations' lifecycle events. With no index (a stack from
        before it, or one being built) from every lifecycle event in OPS, and `index_note` says so.

        `max_walk`: stop walking the index at the end of the hour in which this many summaries have
        been read, though the page is not full (a search that keeps few rows would otherwise read
        the whole history in one call); `next_before` is then that hour's start and `searched_to`
        says so (None when the walk was not cut short)."""
        filters = filters or Filters()
        self.index_note, self.index_read, self.dropped, self.ops_read = None, 0, 0, 0
        self.searched_to: str | None = None
        self._from_index: set[str] = set()
        try:
            out, self.next_before = await self._list_indexed(limit, filters, before, max_walk)
        except opsindex.IndexMissing as exc:
            self.index_note = f"{exc}: listed from the whole log (`ktrdr ops reindex` builds the index)"
            collect = await collect_views(self.js)
            self.dropped = collect.dropped
            views = {v.op_id: v for v in collect.views.values() if v.created_at is not None or v.terminal}
            rows, self.next_before = page((summarize(v) for v in views.values()), filters, limit, before)
            out = [views[s.op_id] for s in rows]
        # (a rejected operation never ran: no progress to look for; a row from its summary has it)
        await asyncio.gather(*(latest_progress(self.js, v) for v in out
                               if v.status not in ("completed", "rejected") and v.op_id not in self._from_index))
        return out

    async def _list_indexed(self, limit: int | None, filters: Filters, before: str | None,
                            max_walk: int | None = None) -> tuple[list[OperationView], str | None]:
        mark = await opsindex.read_mark(self.js)
        fresh_ids: set[str] = set()
        async with contextlib.aclosing(walk_tail(self.js, mark.seq + 1)) as walk:
            async for _seq, subject, _data, _proof in walk:
                if not subjects.is_lifecycle(subject):
                    continue
                parsed = subjects.parse_ops_subject(subject)
                if parsed is not None and subjects.is_op_id(parsed[1]):
                    fresh_ids.add(parsed[1])
                    if len(fresh_ids) > FRESH_MAX:
                        raise opsindex.IndexMissing(f"the operations index is {len(fresh_ids)}+ operations behind")
        views = await self._views_of(fresh_ids)
        fresh = {o: summarize(v) for o, v in views.items() if v.created_at is not None or v.terminal}
        by_hour: dict[str, list[str]] = {}
        for o in fresh:
            by_hour.setdefault(hour_of(o), []).append(o)
        rows: dict[str, OpSummary] = {}
        cursor = None
        full = False
        to_walk = hours_to_walk(set(await opsindex.hours(self.js)) | set(by_hour), filters, before)
        found = await self._by_words(filters, before, limit, to_walk, set(fresh) | set(views))
        if found is not None:  # the search's words looked up: only their operations were read
            rows.update({o: s for o, s in fresh.items() if filters.keeps(s)})
            rows.update(found)
            to_walk = []
        for i, hour in enumerate(to_walk):
            # Only the rows the filters keep are held: paging re-sorts what is held after each
            # bucket, so holding every row walked made a search that keeps few rows quadratic (a
            # free-text search at 100,000 operations took 224 s; bench.scale history).
            rows.update({o: fresh[o] for o in by_hour.get(hour, ()) if filters.keeps(fresh[o])})
            async with contextlib.aclosing(opsindex.hour_buckets(self.js, hour)) as parts:
                async for got in parts:  # the hour, or its minutes newest first
                    self.index_read += len(got)
                    rows.update({s.op_id: s for s in got
                                 if s.op_id not in fresh and s.op_id not in views and filters.keeps(s)})
                    _kept, cursor = page(rows.values(), filters, limit, before)
                    if limit and cursor is not None:
                        full = True  # more than a page kept from the newest: the older cannot be in it
                        break
            if full:
                break
            if max_walk and self.index_read >= max_walk and i + 1 < len(to_walk):
                # Every operation made from this hour's start on has been looked at: the next call
                # goes on from there.
                self.searched_to = hour_start(hour).isoformat()
                break
        chosen, cursor = page(rows.values(), filters, limit, before)
        if self.searched_to is not None and cursor is None:
            cursor = self.searched_to
        # An ended operation's row from its summary alone; live ones (they change) and summaries
        # from an indexer older than the rows are read from OPS.
        ended = {s.op_id: row_view(s) for s in chosen if s.row and s.status in TERMINAL and s.op_id not in views}
        self._from_index = set(ended)
        views.update(ended)
        views.update(await self._views_of({s.op_id for s in chosen} - set(views)))
        return [views[s.op_id] for s in chosen if s.op_id in views], cursor

    async def _by_words(self, filters: Filters, before: str | None, limit: int | None, to_walk: list[str],
                        skip: set[str]) -> dict[str, OpSummary] | None:
        """A free-text search through the words the index files operations under (ktrdr.ops.search):
        the newest `limit` + 1 summaries kept by `filters` (made before the cursor, in the hours to
        walk, not among `skip`: those read from the log), reading only candidates' summaries. None
        when the words cannot serve it (no text, the start of an op id: the hour walk serves it; no
        whole word, or an index from before words: the walk, and `index_note` says so)."""
        if filters.text is None or filters.id_digits is not None:
            return None
        asked = words(filters.text)
        if not asked:
            self.index_note = "the search text has no whole word to look up: searched by reading the index"
            return None
        if not await opsindex.has_words(self.js):
            self.index_note = ("this operations index has no search words (built before them): searched by reading "
                               "the index; `ktrdr ops reindex` files them")
            return None
        hours = set(to_walk)
        cut = before_key(before) if before else None

        def wanted(o: str) -> bool:
            return o not in skip and hour_of(o) in hours and (cut is None or (subjects.created_at_of(o), o) < cut)

        found: dict[str, OpSummary] = {}

        async def take(ids: list[str]) -> bool:
            """Read the candidates' summaries newest first, keep what the filters keep; True once full."""
            ids = sorted({o for o in ids if wanted(o)}, key=lambda o: (subjects.created_at_of(o), o), reverse=True)
            step = max(64, 2 * (limit or 0))
            for i in range(0, len(ids), step):
                got = await opsindex.summaries_of(self.js, ids[i:i + step])
                self.index_read += len(got)
                found.update({o: s for o, s in got.items() if filters.keeps(s)})
                if limit and len(found) > limit:
                    return True
            return False

        answers = await asyncio.gather(*(opsindex.ops_of_word(self.js, w) for w in asked))
        known = [set(a) for a in answers if a is not None]
        if known:  # the rarest words' operations, all at once (each of them is filed under every word asked)
            await take(list(set.intersection(*known)))
            return found
        # Every word is common: the operations filed under them a stretch of hours at a time, newest
        # first (the stretch halves when a read would answer too many, doubles when few); after the
        # first stretch only the word that had the fewest there is read (the text filter checks the rest).
        i, span, ws = 0, 8, asked
        while i < len(to_walk):
            hours_now = to_walk[i:i + span]
            if span == 1:  # one busy hour: one word's (read whole, by a scan if need be)
                ws = ws[:1]
                per_word: list[list[str] | None] = [await opsindex.ops_of_word(self.js, ws[0], hours_now[0])]
            else:
                per_word = list(await asyncio.gather(*(opsindex.ops_of_word_in(self.js, w, hours_now) for w in ws)))
            if any(ids is None for ids in per_word):
                span = max(1, span // 2)
                continue
            got = [set(ids or ()) for ids in per_word]
            if len(ws) > 1:
                ws = [min(zip(ws, got, strict=True), key=lambda wg: len(wg[1]))[0]]
            if await take(list(set.intersection(*got))):
                break
            i += len(hours_now)
            if max(len(g) for g in got) < opsindex.MULTI_LAST_MAX // 4:
                span = min(256, span * 2)
        return found

    async def _views_of(self, op_ids: set[str]) -> dict[str, OperationView]:
        """Those operations' views from their stored lifecycle events only."""
        self.ops_read += len(op_ids)
        got = await read_views_of(self.js, op_ids, per_read=VIEWS_PER_READ)
        self.dropped += got.dropped
        return {o: v for o, v in got.views.items() if v.created_at is not None or v.terminal}

    async def reindex(self, timeout: float = 600.0) -> OperationsReindexed:
        """Ask the active orchestrator to rebuild the operations index from OPS (it alone writes the
        index); what it did. NotReadyError when no orchestrator is active to ask."""
        assert self.nc is not None
        try:
            reply = await self.nc.request(subjects.REINDEX, encode(ReindexOperations(requested_by=self.name)),
                                          timeout=timeout)
        except nats.errors.NoRespondersError:
            raise NotReadyError("no active orchestrator to rebuild the index",
                                hint="start one (`ktrdr up`) and try again") from None
        return decode(reply.data, OperationsReindexed)

    async def tail(self, on_event: Callable[[str, Any, bytes], None], stop: asyncio.Event) -> None:
        """Every operation's events live (core subscription on ops.>)."""
        assert self.nc is not None

        async def cb(msg: Msg) -> None:
            try:
                ev: Any = decode_event_on(msg.subject, msg.data)
            except DecodeError as exc:
                ev = exc  # undecodable, or a body that disagrees with its subject: shown as dropped
            on_event(msg.subject, ev, msg.data)

        sub = await self.nc.subscribe(subjects.OPS_ALL, cb=cb)
        await stop.wait()
        await sub.unsubscribe()
