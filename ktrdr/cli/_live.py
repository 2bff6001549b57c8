"""Running an operation from the terminal: submit, render live progress, Ctrl+C cancels.

Exit codes: 0 success · 1 the operation failed or hit its deadline · 2 usage or validation error ·
130 cancelled (Ctrl+C or a cancel).

The line printer is a pure function of the event sequence: it prints a changed line at most every
THROTTLE_S of the events' recorded time (not the wall clock), so `ops replay` at any speed, to a
terminal or a pipe, prints exactly the lines the live display printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from events import roles, subjects
from events.codec import DecodeError, decode_event_on
from events.messages import ROLE_FOR_DOMAIN, AnyEvent, Command, Heartbeat, RunSweep, StartTraining
from ktrdr.cli._listing import view_json as view_json  # the commands import it from here
from ktrdr.client import Client
from ktrdr.ops import OperationView
from ktrdr.rendering import ProgressRenderer
from ktrdr.transport.replay import read_events, stream_events

EXIT = {"completed": 0, "failed": 1, "rejected": 2, "cancelled": 130}
THROTTLE_S = 0.5


def exit_code(view: OperationView) -> int:
    if view.status == "cancelled" and view.reason_code == "deadline":
        return 1  # a deadline is a failure to finish in time, not the user's choice
    return EXIT.get(view.status, 1)


class LinePrinter:
    """The text lines of an operation's progress, throttled by the events' own timestamps."""

    def __init__(self, renderer: ProgressRenderer) -> None:
        self.renderer = renderer
        self._last_line = ""
        self._last_ts: datetime | None = None

    def line_for(self, ev: AnyEvent, view: OperationView) -> str | None:
        if view.terminal:
            return None  # print_final says how it ended
        ts = ev.ts
        due = self._last_ts is None or (ts - self._last_ts).total_seconds() >= THROTTLE_S \
            or view.status != "running"
        if not due:  # decided before rendering: a replay folds events far faster than it prints lines
            return None
        line = self.renderer.line(view)
        if line == self._last_line:
            return None
        self._last_line, self._last_ts = line, ts
        return line


class LiveDisplay:
    """A rich progress bar on a terminal; the throttled lines otherwise."""

    def __init__(self, renderer: ProgressRenderer, *, quiet: bool = False) -> None:
        self.renderer = renderer
        self.quiet = quiet
        self.tty = sys.stdout.isatty()
        self.printer = LinePrinter(renderer)
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> LiveDisplay:
        if self.tty and not self.quiet:
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                      TimeElapsedColumn(), transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task("starting", total=100)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)

    def update(self, ev: AnyEvent, view: OperationView) -> None:
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.update(self._task, description=self.renderer.line(view) if not view.terminal else
                                  self.renderer.progress_text(view), completed=view.percentage)
            return
        line = self.printer.line_for(ev, view)
        if line is not None:
            print(line, flush=True)


def _renderer(op_id: str) -> ProgressRenderer:
    return ProgressRenderer.for_domain(subjects.domain_of(op_id))


async def follow(client: Client, op_id: str, *, json_out: bool = False, cancel_on_interrupt: bool = True,
                 needs: list[tuple[str, str]] | None = None) -> OperationView:
    """Watch an operation until terminal, rendering live; the first Ctrl+C publishes the cancel and
    waits for the `cancelled` event (or, for an operation not created yet, leaves once the cancel is
    recorded), a second one leaves at once. With `needs` ((domain, pool) of the workers it waits
    for), an operation that has not started after NOTICE_AFTER_S is told why on stderr."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    interrupts = 0
    cancel_tasks: list[asyncio.Task[None]] = []
    latest = OperationView(op_id=op_id)

    def left_uncreated(task: asyncio.Task[None]) -> None:
        # Nobody has created it (no orchestrator, maybe): the recorded cancel applies when one does.
        if not task.cancelled() and task.exception() is None and latest.created_at is None:
            stop.set()

    def on_sigint() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1 and cancel_on_interrupt:
            print(f"\nCancelling {op_id} ...", file=sys.stderr, flush=True)
            cancel_tasks.append(loop.create_task(client.cancel(op_id, reason="Ctrl+C", requested_by=roles.CLI)))
            cancel_tasks[-1].add_done_callback(left_uncreated)
        else:
            stop.set()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    notices = loop.create_task(_say_why_waiting(client, needs, lambda: latest)) if needs else None
    try:
        with LiveDisplay(_renderer(op_id), quiet=json_out) as display:
            def on_event(ev: AnyEvent, view: OperationView) -> None:
                nonlocal latest
                latest = view
                display.update(ev, view)

            view = await client.watch(op_id, on_event, stop=stop)
    finally:
        if notices is not None:
            notices.cancel()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
    if interrupts and cancel_on_interrupt and not view.terminal:
        view.status = "cancelled"
        if view.created_at is None:
            view.message = ("Operation cancelled before anyone created it (the cancel is recorded: an "
                            "orchestrator that creates it later cancels it at once)")
        view.where = view.where or "not confirmed: the worker did not answer before the CLI left"
    return view


NOTICE_AFTER_S = 1.0  # an operation not started by then is told why it waits
NOTICE_EVERY_S = 2.0  # then presence is read again at this pace, and a changed reason said


def workers_needed(cmd: Command) -> list[tuple[str, str]]:
    """(domain, pool) of the workers a command waits for first: a training workflow's data loads,
    else the command's own domain and pool."""
    if isinstance(cmd, StartTraining | RunSweep) and cmd.data_mode != "none":
        return [("data", subjects.DEFAULT_POOL)]  # its first children: one data load per series
    return [(cmd.domain, cmd.pool)]


def waiting_notice(view: OperationView, beats: list[Heartbeat], needs: list[tuple[str, str]],
                   now: datetime) -> str | None:
    """Why an operation that has not started waits, from the actors' presence; None when it is not
    waiting or nothing is missing. A heartbeat counts while it is recent (by its own timestamp, with
    room for clock skew): a killed actor's entry outlives it in the bucket."""
    if view.terminal or view.status == "running":
        return None
    live = [hb for hb in beats if not hb.stopping
            and (now - hb.ts).total_seconds() <= max(5 * hb.interval_s, 5.0)]
    waiting = "still waiting (Ctrl+C cancels)"
    if not any(hb.role == roles.ORCHESTRATOR for hb in live):
        return (f"{view.op_id}: queued; no orchestrator is alive to start it (`ktrdr status` lists the live "
                f"actors; `ktrdr up` starts the local stack); {waiting}")
    if view.created_at is None:
        return None  # an orchestrator is alive and will create it
    for domain, pool in needs:
        if not any(hb.domain == domain and pool in hb.pools for hb in live):
            role = ROLE_FOR_DOMAIN.get(domain, domain)
            return (f"{view.op_id}: queued; no {role} worker in pool {pool} is alive (`ktrdr status` lists "
                    f"the live actors); {waiting}")
    return None


async def _say_why_waiting(client: Client, needs: list[tuple[str, str]], current: Callable[[], OperationView]
                           ) -> None:
    said: str | None = None
    await asyncio.sleep(NOTICE_AFTER_S)
    while not (current().terminal or current().status == "running"):
        try:
            note = waiting_notice(current(), await client.live_actors(), needs, datetime.now(UTC))
        except Exception:  # presence is a courtesy here: a read that fails says nothing
            note = said
        if note is not None and note != said:
            print(note, file=sys.stderr, flush=True)
        said = note
        await asyncio.sleep(NOTICE_EVERY_S)


def print_final(view: OperationView, *, json_out: bool) -> None:
    if json_out:
        print(json.dumps(view_json(view), default=str))
        return
    line = ProgressRenderer.for_domain(view.domain or subjects.domain_of(view.op_id)).final(view)
    if view.status == "cancelled":
        print(f"{line} (operation {view.op_id})")
    elif view.status in ("failed", "rejected"):
        print(line, file=sys.stderr)
    else:
        print(line)


def check_locally(cmd: Command) -> None:
    """The orchestrator's validation, run here first: a bad command is refused at once with exit 2,
    without a server (the orchestrator checks again: other clients exist)."""
    from ktrdr.commands import validate

    validate(cmd)


# `ktrdr schedule add NAME ... -- <starting command>` runs the starting command's own verb with this set:
# run_command then checks the command it was given and keeps it here instead of submitting it, so a
# schedule's command is parsed and validated by exactly the code `ktrdr data load`, `train`, ... use.
_captured: list[Command] | None = None


@contextlib.contextmanager
def capturing() -> Any:
    """Within it, run_command keeps its checked command in the yielded list and submits nothing."""
    global _captured
    before, _captured = _captured, []
    try:
        yield _captured
    finally:
        _captured = before


async def run_command(cmd: Command, *, wait: bool, json_out: bool,
                      check: Callable[[Client, Command], Awaitable[Any]] | None = None,
                      summary: Callable[[dict[str, Any]], list[str]] | None = None) -> int:
    """Check `cmd` here (and with `check` against the server: what only stored state can refuse),
    submit it, and follow it live unless not `wait`; a completed one's result is then printed as
    `summary`'s lines (not with --json)."""
    from ktrdr.cli._common import client

    check_locally(cmd)
    if _captured is not None:  # a schedule's command: checked, kept, not submitted
        _captured.append(cmd)
        return 0
    async with client() as c:
        if check is not None:
            await check(c, cmd)
        await c.submit(cmd)
        if not wait:
            print(json.dumps({"op_id": cmd.op_id}) if json_out else cmd.op_id)
            return 0
        view = await follow(c, cmd.op_id, json_out=json_out, needs=workers_needed(cmd))
    print_final(view, json_out=json_out)
    if summary is not None and view.status == "completed" and not json_out and view.result:
        for line in summary(view.result):
            print(line)
    return exit_code(view)


async def replay(client: Client, op_id: str, *, speed: float | None, json_out: bool) -> OperationView:
    """Re-render the stored stream as it arrives: each event is folded and rendered (or, with
    json_out, printed as one JSON object a line) before the next is read, so memory does not grow
    with the number of events. Without `speed` (or 0) as fast as the events come; with it, the
    recorded gaps divided by speed (each at most 10 s)."""
    from ktrdr.ops import fold
    from ktrdr.ops.reader import proven_events, settle

    view = OperationView(op_id=op_id)
    with LiveDisplay(_renderer(op_id), quiet=json_out) as display:
        show = _print_json if json_out else display.update

        def on_msg(subject: str, data: bytes, proof: bytes | None) -> None:
            # a body its subject does not prove: dropped, counted; a held event once the holder's
            # signature vouches for it (a replay defers signatures: one verified per batch)
            for ev in proven_events(view, subject, data, proof, lazy=not speed):
                fold(view, ev)
                show(ev, view)

        if speed:
            await _replay_paced(client, op_id, speed, on_msg)
        else:
            await read_events(client.js, [subjects.ops(op_id)], on_msg, proofs=True)
        for ev in settle(view, folded=False):
            fold(view, ev)
            show(ev, view)
    return view


def _print_json(ev: AnyEvent, _view: OperationView) -> None:
    sys.stdout.write(msgspec.json.encode(ev).decode() + "\n")


async def _replay_paced(client: Client, op_id: str, speed: float,
                        on_msg: Callable[[str, bytes, bytes | None], None]) -> None:
    prev: datetime | None = None
    async with contextlib.aclosing(stream_events(client.js, [subjects.ops(op_id)])) as stream:
        async for subject, data, proof in stream:
            try:  # paced by the events its subjects prove; on_msg drops (and counts) the others
                ts = decode_event_on(subject, data).ts
            except DecodeError:
                ts = None
            if prev is not None and ts is not None:
                gap = (ts - prev).total_seconds() / speed
                if gap > 0:
                    await asyncio.sleep(min(gap, 10.0))
            prev = ts or prev
            on_msg(subject, data, proof)
