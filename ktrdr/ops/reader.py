"""The one reader that rebuilds views from what OPS stored: every operation's view from its lifecycle
events (the orchestrator on start, `ops list`), or one operation's whole history (`ops show`). The
events are folded as they arrive, never held in a list.

Every message is decoded against its subject (events.codec.decode_event_on): an event is filed under
the operation its subject names, never the one its body names, and a body that disagrees with its
subject (a completion published on a cancel subject, a training's op id on a data subject) is dropped
and counted (`OperationView.dropped`, `ViewCollector.dropped`) with a note saying what the first was.
`fold_message` is that path for one view; every reader of ops subjects goes through it or decode_event_on.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from events import subjects
from events.codec import DecodeError, decode_event_on
from events.messages import AnyEvent
from ktrdr.ops.fold import fold
from ktrdr.ops.view import MAX_NOTES, OperationView
from ktrdr.transport import read_events

MAX_NOTE = 300


def count_dropped(view: OperationView, subject: str, exc: DecodeError) -> None:
    """A message on `view`'s subjects that is not one of its events: counted, the first one noted."""
    view.dropped += 1
    if view.dropped == 1 and len(view.errors) < MAX_NOTES:
        view.errors.append(f"dropped a message on {subject[:120]}: {str(exc)[:MAX_NOTE]}")


def fold_message(view: OperationView, subject: str, data: bytes) -> AnyEvent | None:
    """Fold one message read from `view`'s operation's subjects; the event, or None when dropped."""
    try:
        ev = decode_event_on(subject, data)
    except DecodeError as exc:
        count_dropped(view, subject, exc)
        return None
    if view.op_id and ev.op_id != view.op_id:  # a reader that asked for this op and got another's
        count_dropped(view, subject, DecodeError(f"an event of {ev.op_id} read as one of {view.op_id}"))
        return None
    fold(view, ev)
    return ev


def fold_into(views: dict[str, OperationView], subject: str, data: bytes) -> OperationView | None:
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
    fold(view, ev)
    return view


class ViewCollector:
    """An on_msg for transport.read_events: folds each stored event into the view of the operation
    its subject names (garbage published on an ops subject, or a body that disagrees with its subject,
    is nobody's: counted in `dropped`, and in the view of the operation whose subject it was on)."""

    def __init__(self) -> None:
        self.views: dict[str, OperationView] = {}
        self.dropped = 0

    def __call__(self, subject: str, data: bytes) -> None:
        if fold_into(self.views, subject, data) is None:
            self.dropped += 1


async def collect_views(js: JetStreamContext, filters: list[str] | None = None) -> ViewCollector:
    """Every stored operation's view, folded from the stored events matching `filters` (by default
    the lifecycle events of all operations: no progress, so it stays quick), with the drop count."""
    collect = ViewCollector()
    await read_events(js, filters if filters is not None else subjects.lifecycle_filters(), collect)
    return collect


async def read_views(js: JetStreamContext, filters: list[str] | None = None) -> dict[str, OperationView]:
    """The views of every stored operation (see collect_views)."""
    return (await collect_views(js, filters)).views


async def read_view(js: JetStreamContext, op_id: str) -> OperationView:
    """One operation's view from all its stored events, progress included."""
    view = OperationView(op_id=op_id)

    def on_msg(subject: str, data: bytes) -> None:
        fold_message(view, subject, data)

    await read_events(js, [subjects.ops(op_id)], on_msg)
    return view
