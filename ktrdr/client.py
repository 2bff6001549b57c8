"""The client side of the wire: what the CLI (and any Python program) uses to submit commands,
follow an operation live or from its stored record, list operations and cancel them.

Watching starts an ordered consumer on `ops.<domain>.<op_id>.>` from the first stored event, so a
client sees the same sequence whether it attaches before, during or after the operation: replay
first, then live, through the same fold.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import KeyDeletedError, KeyNotFoundError, NoKeysError, NotFoundError

from actors._jetstream import connect, ensure_streams, msg_id_headers, read_events, read_operation
from events import subjects
from events.codec import DecodeError, decode_event, decode_heartbeat, encode
from events.messages import AnyCommand, AnyEvent, CancelOperation, Heartbeat, OperationProgress
from ktrdr.config import Settings
from ktrdr.operations import OperationView, fold, fold_all


class Client:
    def __init__(self, settings: Settings, *, url: str | None = None) -> None:
        self.settings = settings
        self.url = url
        self.nc: NATS | None = None
        self._js: JetStreamContext | None = None

    async def __aenter__(self) -> Client:
        self.nc = await connect(self.settings, "ktrdr-cli", url=self.url, max_reconnect_attempts=5)
        self._js = self.nc.jetstream()
        return self

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

    async def ensure_streams(self) -> list[str]:
        return await ensure_streams(self.js, self.settings)

    async def live_actors(self) -> list[Heartbeat]:
        """The last heartbeat of every live actor (KV bucket ACTORS; an entry expires with its actor)."""
        kv = await self.js.key_value(subjects.ACTORS_BUCKET)
        try:
            keys = await kv.keys()
        except NoKeysError:  # no actor is alive
            return []
        beats = []
        for key in keys:
            try:
                entry = await kv.get(key)
            except (KeyNotFoundError, KeyDeletedError):  # that actor stopped (or expired) meanwhile
                continue
            if entry.value:
                beats.append(decode_heartbeat(entry.value))
        return beats

    async def submit(self, cmd: AnyCommand) -> None:
        """Publish a command (stored in CMD; a retried publish of the same op is stored once)."""
        await self.ensure_streams()
        subject = subjects.COMMAND_SUBJECTS[type(cmd).__name__]
        await self.js.publish(subject, encode(cmd), headers=msg_id_headers(f"cmd-{cmd.op_id}"))

    async def cancel(self, op_id: str, reason: str = "cancel requested", requested_by: str = "cli") -> None:
        await self.js.publish(subjects.cancel(op_id), encode(CancelOperation(
            op_id=op_id, reason=reason, requested_by=requested_by)))

    async def events(self, op_id: str) -> list[AnyEvent]:
        return await read_operation(self.js, op_id)

    async def view(self, op_id: str) -> OperationView:
        return fold_all(await self.events(op_id))

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
        fold. Returns the view when the operation is terminal (or `stop` is set)."""
        view = OperationView(op_id=op_id)
        done = stop or asyncio.Event()
        finished = asyncio.Event()

        async def cb(msg: Msg) -> None:
            try:
                ev = decode_event(msg.data)
            except DecodeError:
                return  # someone published garbage on an ops subject: not our business to render
            fold(view, ev)
            on_event(ev, view)
            if until_terminal and view.terminal:
                finished.set()

        sub = await self.js.subscribe(subjects.ops(op_id), cb=cb, ordered_consumer=True,
                                      deliver_policy=js_api.DeliverPolicy.ALL)
        try:
            waiters = [asyncio.ensure_future(finished.wait()), asyncio.ensure_future(done.wait())]
            await asyncio.wait(waiters, timeout=idle_timeout, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return view

    async def list_operations(self, *, limit: int | None = None) -> list[OperationView]:
        """Every stored operation (lifecycle events only; the latest progress of running ones)."""
        await self.ensure_streams()
        filters = [f"ops.*.*.{e}" for e in ("created", "started", "completed", "failed", "cancelled", "rejected",
                                             "cancel_requested")]
        views: dict[str, OperationView] = {}

        def on_msg(_subject: str, data: bytes) -> None:
            try:
                ev = decode_event(data)
            except DecodeError:
                return
            fold(views.setdefault(ev.op_id, OperationView(op_id=ev.op_id)), ev)

        await read_events(self.js, filters, on_msg)
        for v in views.values():
            if not v.terminal:
                await self._latest_progress(v)
        out = sorted(views.values(), key=lambda v: v.op_id)
        return out[-limit:] if limit else out

    async def _latest_progress(self, view: OperationView) -> None:
        try:
            raw = await self.js.get_last_msg(subjects.STREAM_OPS, subjects.ops(view.op_id, "progress"), direct=True)
        except (NotFoundError, Exception):
            return
        try:
            ev = decode_event(raw.data or b"")
        except DecodeError:
            return
        if isinstance(ev, OperationProgress):
            fold(view, ev)

    async def tail(self, on_event: Callable[[str, AnyEvent | None, bytes], None], stop: asyncio.Event) -> None:
        """Every operation's events live (core subscription on ops.>)."""
        assert self.nc is not None

        async def cb(msg: Msg) -> None:
            try:
                ev: AnyEvent | None = decode_event(msg.data)
            except DecodeError:
                ev = None
            on_event(msg.subject, ev, msg.data)

        sub = await self.nc.subscribe(subjects.OPS_ALL, cb=cb)
        await stop.wait()
        await sub.unsubscribe()


def event_time(ev: Any) -> datetime | None:
    return getattr(ev, "ts", None)
