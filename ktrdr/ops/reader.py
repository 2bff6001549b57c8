"""The one reader that rebuilds views from what OPS stored: every operation's view from its lifecycle
events (the orchestrator on start, `ops list`), or one operation's whole history (`ops show`). The
events are folded as they arrive, never held in a list.

Every message is decoded against its subject (events.codec.decode_event_on): an event is filed under
the operation its subject names, never the one its body names, and a body that disagrees with its
subject (a completion published on a cancel subject, a training's op id on a data subject) is dropped
and counted (`OperationView.dropped`, `ViewCollector.dropped`) with a note saying what the first was.
`fold_message` is that path for one view; every reader of ops subjects goes through it or decode_event_on.

What an event's subject cannot prove (which process of a role sent it) the holder proof does
(events/proof.py): `admit` stands in front of the fold for every message and lets a worker's held
event (progress, verdict, error) through only once a signature by the key of the operation's latest
grant vouches for it, in chain order; the orchestrator's own events are proven by their subject
tokens, and a grant (`started`) only the orchestrator publishes. The chain's state lives on the view.
A forged or a stranger's event never counts: `unproven` counts them, a note names the first ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import cast

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from events import subjects
from events.codec import DecodeError, decode_event_on
from events.messages import (
    HELD_EVENTS,
    AnyEvent,
    Event,
    OperationProgress,
    OperationStarted,
    OrchestratorProgress,
)
from events.proof import HEADER, Chain
from ktrdr.ops.fold import fold
from ktrdr.ops.view import MAX_NOTES, TERMINAL, OperationView, apply_progress
from ktrdr.transport import read_events
from ktrdr.transport.publish import retrying
from ktrdr.transport.replay import ReadEvents

MAX_NOTE = 300
Proof = bytes | str | None
_HELD = frozenset(HELD_EVENTS)
_TERMINAL = frozenset(TERMINAL)


def _chain(view: OperationView, lazy: bool) -> Chain:
    chain: Chain | None = getattr(view, "_chain", None)
    if chain is None:
        chain = view._chain = Chain(lazy=lazy)  # type: ignore[attr-defined]
    return chain


def admit(view: OperationView, subject: str, data: bytes, proof: Proof, ev: AnyEvent, *,
          lazy: bool = False) -> Sequence[AnyEvent]:
    """The events `view` may fold now, in order, for one decoded message: a held event of a worker
    once the holder's signature reaches it (maybe with the ones before it on the chain; nothing yet
    when unsigned), anything else as it is. `lazy` (a replay): defer signatures to verify one per batch."""
    kind = type(ev)
    if kind not in _HELD:
        if kind is OperationStarted and isinstance(ev, OperationStarted) and ev.attempt >= view.attempts \
                and view.status not in _TERMINAL:
            earlier = _chain(view, lazy).grant(ev.key)
            return (*earlier, ev) if earlier else (ev,)
        return (ev,)
    if view.status in _TERMINAL:
        return (ev,)  # terminal is final: the fold counts it and changes nothing
    events, note = _chain(view, lazy).admit(subject, data, proof, ev, kind is not OperationProgress)
    if note is not None:
        view.unproven += 1
        if len(view.errors) < MAX_NOTES:
            view.errors.append(f"ignored an unproven {kind.__name__} (from {ev.actor[:80] or '?'}): {note}")
    return events


def settle(view: OperationView, *, folded: bool = True) -> list[AnyEvent]:
    """At the end of a read: what the deferred signatures vouch for, folded (unless not `folded`)."""
    chain: Chain | None = getattr(view, "_chain", None)
    if chain is None or not chain.signed:
        return []
    events, _note = chain.confirm()
    if folded:
        for e in events:
            fold(view, e)
    return list(events)


def fold_trusted(view: OperationView, ev: Event) -> None:
    """Fold an event this process published itself (the orchestrator's own; a grant sets the key)."""
    for e in admit(view, "", b"", None, cast(AnyEvent, ev)):
        fold(view, e)


def count_dropped(view: OperationView, subject: str, exc: DecodeError) -> None:
    """A message on `view`'s subjects that is not one of its events: counted, the first one noted."""
    view.dropped += 1
    if view.dropped == 1 and len(view.errors) < MAX_NOTES:
        view.errors.append(f"dropped a message on {subject[:120]}: {str(exc)[:MAX_NOTE]}")


def proven_events(view: OperationView, subject: str, data: bytes, proof: Proof = None, *,
                  lazy: bool = False) -> Sequence[AnyEvent]:
    """The events one message read from `view`'s operation's subjects lets `view` fold now, not yet
    folded (a renderer folds and shows them one at a time): none when dropped or not proven yet,
    several when a signature confirms them."""
    try:
        ev = decode_event_on(subject, data)
    except DecodeError as exc:
        count_dropped(view, subject, exc)
        return ()
    if view.op_id and ev.op_id != view.op_id:  # a reader that asked for this op and got another's
        count_dropped(view, subject, DecodeError(f"an event of {ev.op_id} read as one of {view.op_id}"))
        return ()
    return admit(view, subject, data, proof, ev, lazy=lazy)


def fold_message(view: OperationView, subject: str, data: bytes, proof: Proof = None, *,
                 lazy: bool = False) -> Sequence[AnyEvent]:
    """Fold one message read from `view`'s operation's subjects (with its holder proof header); the
    events folded (see proven_events)."""
    events = proven_events(view, subject, data, proof, lazy=lazy)
    for e in events:
        fold(view, e)
    return events


def fold_into(views: dict[str, OperationView], subject: str, data: bytes, proof: Proof = None) -> OperationView | None:
    """Fold one message into the view of the operation its subject names (made when new); None when
    it is dropped: garbage, a body its subject does not prove (counted in the view of the operation
    whose subject it was on, when that view exists) or an op id that is not one."""
    try:
        ev = decode_event_on(subject, data)
    except DecodeError as exc:
        parsed = subjects.parse_ops_subject(subject)
        view = views.get(parsed[1]) if parsed else None
        if view is not None:
            count_dropped(view, subject, exc)
        return None
    view = views.get(ev.op_id)
    if view is None:
        if not subjects.is_op_id(ev.op_id):
            return None
        view = views[ev.op_id] = OperationView(op_id=ev.op_id)
    for e in admit(view, subject, data, proof, ev):
        fold(view, e)
    return view


class ViewCollector:
    """An on_msg for transport.read_events: folds each stored event into the view of the operation
    its subject names (garbage published on an ops subject, or a body that disagrees with its subject,
    is nobody's: counted in `dropped`, and in the view of the operation whose subject it was on)."""

    def __init__(self) -> None:
        self.views: dict[str, OperationView] = {}
        self.dropped = 0

    def __call__(self, subject: str, data: bytes, proof: Proof = None) -> None:
        if fold_into(self.views, subject, data, proof) is None:
            self.dropped += 1


async def collect_views(js: JetStreamContext, filters: list[str] | None = None) -> ViewCollector:
    """Every stored operation's view, folded from the stored events matching `filters` (by default
    the lifecycle events of all operations: no progress, so it stays quick), with the drop count."""
    collect = ViewCollector()
    await read_events(js, filters if filters is not None else subjects.lifecycle_filters(), collect, proofs=True)
    for view in collect.views.values():
        settle(view)
    return collect


async def read_views(js: JetStreamContext, filters: list[str] | None = None) -> dict[str, OperationView]:
    """The views of every stored operation (see collect_views)."""
    return (await collect_views(js, filters)).views


async def read_views_of(js: JetStreamContext, op_ids: Iterable[str], *, per_read: int = 32,
                        parallel: int = 8) -> ViewCollector:
    """The views of those operations only, from their stored lifecycle events (`per_read` operations
    per read, `parallel` reads side by side): what a reader of the operations index reads for the
    rows it shows, and the orchestrator for the live operations it rebuilds."""
    ids = sorted(set(op_ids))
    out = ViewCollector()
    sem = asyncio.Semaphore(parallel)

    async def one(chunk: list[str]) -> None:
        async with sem:
            got = await collect_views(js, [f for o in chunk for f in subjects.lifecycle_filters(o)])
        out.views.update(got.views)
        out.dropped += got.dropped

    await asyncio.gather(*(one(ids[i:i + per_read]) for i in range(0, len(ids), per_read)))
    return out


async def read_view(js: JetStreamContext, op_id: str) -> OperationView:
    """One operation's view from all its stored events, progress included."""
    view = OperationView(op_id=op_id)

    def on_msg(subject: str, data: bytes, proof: Proof) -> None:
        fold_message(view, subject, data, proof, lazy=True)

    await read_events(js, [subjects.ops(op_id)], on_msg, proofs=True)
    settle(view)
    return view


async def read_proven(js: JetStreamContext, op_id: str, *, lifecycle: bool = False,
                      linger: bool = False) -> ReadEvents:
    """One operation's stored events that count, in the order the fold takes them (a held event once
    the holder's signature vouches for it): all of them, or its lifecycle events only. `dropped`
    counts what its subjects carried that was not its events, `unproven` what no signature reached."""
    out = ReadEvents()
    view = OperationView(op_id=op_id)

    def on_msg(subject: str, data: bytes, proof: Proof) -> None:
        events = fold_message(view, subject, data, proof, lazy=True)
        out.extend(events)

    filters = subjects.lifecycle_filters(op_id) if lifecycle else [subjects.ops(op_id)]
    await read_events(js, filters, on_msg, proofs=True, linger=linger)  # linger: see read_events
    out.extend(settle(view))
    out.dropped, out.unproven = view.dropped, view.unproven
    out.first_dropped = next((e for e in view.errors if e.startswith("dropped")), "")
    out.notes = tuple(view.errors)
    return out


async def latest_progress(js: JetStreamContext, view: OperationView) -> None:
    """The last progress of an operation, into its view (one direct get of its last progress
    message): an ended one keeps how it ended and shows how far it got (`ops list`, and the
    operations index filing an ended operation's row)."""
    name = OperationProgress.name if view.worker is not None else OrchestratorProgress.name
    subject = subjects.ops(view.op_id, name)
    try:
        raw = await retrying(lambda: js.get_last_msg(subjects.STREAM_OPS, subject, direct=True),
                             errors=(nats.errors.TimeoutError, TimeoutError))
    except (NotFoundError, nats.errors.NoRespondersError):
        return
    if not raw.data:
        return
    ev = proven_alone(view, subject, raw.data, (raw.headers or {}).get(HEADER))
    if not isinstance(ev, OperationProgress):
        return  # only the holder's progress (signed by its key) or the orchestrator's counts
    if view.terminal:  # keep how it ended; show how far it got
        view.percentage, view.context = ev.progress.percentage, ev.progress.context or view.context
    else:
        apply_progress(view, ev.progress)


def proven_alone(view: OperationView, subject: str, data: bytes, proof: Proof) -> AnyEvent | None:
    """One message read on its own (the last progress `ops list` shows): the event, when it counts by
    itself under `view`'s grant (a held event signed by the holder's key, or an orchestrator's)."""
    try:
        ev = decode_event_on(subject, data)
    except DecodeError as exc:
        count_dropped(view, subject, exc)
        return None
    if type(ev) not in _HELD:
        return ev
    if view.worker_key is None:  # a grant stored before the proof existed: the holder's actor id
        return ev if view.worker is not None and ev.actor == view.worker else None
    chain = Chain()
    chain.grant(view.worker_key)
    events, _note = chain.admit(subject, data, proof, ev, True)
    return ev if events else None
