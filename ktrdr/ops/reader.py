"""The one reader that rebuilds views from what OPS stored: every operation's view from its lifecycle
events (the orchestrator on start, `ops list`), or one operation's whole history (`ops show`). The
events are folded as they arrive, never held in a list.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from events import subjects
from events.codec import DecodeError, decode_event
from ktrdr.ops.fold import fold
from ktrdr.ops.view import OperationView
from ktrdr.transport import read_events


class ViewCollector:
    """An on_msg for transport.read_events: folds each stored event into the view of its operation
    (garbage published on an ops subject, or an event without a valid op id, is nobody's)."""

    def __init__(self) -> None:
        self.views: dict[str, OperationView] = {}

    def __call__(self, _subject: str, data: bytes) -> None:
        try:
            ev = decode_event(data)
        except DecodeError:
            return
        view = self.views.get(ev.op_id)
        if view is None:
            if not subjects.is_op_id(ev.op_id):
                return
            view = self.views[ev.op_id] = OperationView(op_id=ev.op_id)
        fold(view, ev)


async def read_views(js: JetStreamContext, filters: list[str] | None = None) -> dict[str, OperationView]:
    """The views of every stored operation, folded from the stored events matching `filters` (by
    default the lifecycle events of all operations: no progress, so it stays quick)."""
    collect = ViewCollector()
    await read_events(js, filters if filters is not None else subjects.lifecycle_filters(), collect)
    return collect.views


async def read_view(js: JetStreamContext, op_id: str) -> OperationView:
    """One operation's view from all its stored events, progress included."""
    view = OperationView(op_id=op_id)

    def on_msg(_subject: str, data: bytes) -> None:
        try:
            fold(view, decode_event(data))
        except DecodeError:
            pass  # garbage published on an ops subject is not an event of this operation

    await read_events(js, [subjects.ops(op_id)], on_msg)
    return view
