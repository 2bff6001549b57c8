"""Running an operation from the terminal: submit, render live progress, Ctrl+C cancels.

Exit codes (DESIGN.md): 0 success · 1 the operation failed · 2 usage or validation error ·
130 cancelled (Ctrl+C or cancel).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from typing import Any

import msgspec

from events import subjects
from events.messages import AnyCommand, AnyEvent
from ktrdr.client import Client
from ktrdr.config import Settings
from ktrdr.operations import OperationView
from ktrdr.rendering import ProgressRenderer

EXIT = {"completed": 0, "failed": 1, "rejected": 2, "cancelled": 130}


def exit_code(view: OperationView) -> int:
    return EXIT.get(view.status, 1)


def view_json(view: OperationView) -> dict[str, Any]:
    d = msgspec.to_builtins(view)
    d["elapsed_s"] = view.elapsed_s
    return d


class LiveDisplay:
    """A rich progress bar on a terminal; one line per change (throttled) otherwise."""

    def __init__(self, renderer: ProgressRenderer, *, quiet: bool = False) -> None:
        self.renderer = renderer
        self.quiet = quiet
        self.tty = sys.stdout.isatty()
        self._progress: Any = None
        self._task: Any = None
        self._last_line = ""
        self._last_print = 0.0

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

    def update(self, view: OperationView) -> None:
        if self.quiet:
            return
        line = self.renderer.line(view)
        if self._progress is not None:
            self._progress.update(self._task, description=line if not view.terminal else
                                  self.renderer.progress_text(view), completed=view.percentage)
            return
        now = time.monotonic()
        if view.terminal:
            return  # print_final says how it ended
        if line != self._last_line and (now - self._last_print >= 0.5 or view.status != "running"):
            print(line, flush=True)
            self._last_line, self._last_print = line, now


async def follow(client: Client, op_id: str, *, json_out: bool = False, cancel_on_interrupt: bool = True,
                 speed: float | None = None) -> OperationView:
    """Watch an operation until terminal, rendering live; the first Ctrl+C publishes the cancel and
    waits for the `cancelled` event, a second one leaves at once."""
    renderer = ProgressRenderer.for_domain(subjects.domain_of(op_id))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    interrupts = 0
    cancel_tasks: list[asyncio.Task[None]] = []

    def on_sigint() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1 and cancel_on_interrupt:
            print(f"\nCancelling {op_id} ...", file=sys.stderr, flush=True)
            cancel_tasks.append(loop.create_task(client.cancel(op_id, reason="Ctrl+C", requested_by="cli")))
        else:
            stop.set()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        with LiveDisplay(renderer, quiet=json_out) as display:
            view = await client.watch(op_id, lambda ev, v: display.update(v), stop=stop)
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
    if interrupts and not view.terminal:
        view.status = "cancelled"
        view.where = view.where or "not confirmed: the worker did not answer before the CLI left"
    return view


def print_final(view: OperationView, *, json_out: bool) -> None:
    if json_out:
        print(json.dumps(view_json(view), default=str))
        return
    renderer = ProgressRenderer.for_domain(view.domain or subjects.domain_of(view.op_id))
    line = renderer.final(view)
    if view.status == "cancelled":
        print(f"{line} (operation {view.op_id})")
    elif view.status in ("failed", "rejected"):
        print(line, file=sys.stderr)
    else:
        print(line)


async def run_command(settings: Settings, cmd: AnyCommand, *, wait: bool, json_out: bool) -> int:
    async with Client(settings) as client:
        await client.submit(cmd)
        if not wait:
            print(json.dumps({"op_id": cmd.op_id}) if json_out else cmd.op_id)
            return 0
        view = await follow(client, cmd.op_id, json_out=json_out)
    print_final(view, json_out=json_out)
    return exit_code(view)


async def replay(client: Client, op_id: str, *, speed: float | None, json_out: bool) -> OperationView:
    """Re-render the stored stream. With `speed`, sleep the recorded gaps divided by speed."""
    from ktrdr.operations import fold

    events: list[AnyEvent] = await client.events(op_id)
    view = OperationView(op_id=op_id)
    renderer = ProgressRenderer.for_domain(subjects.domain_of(op_id))
    prev = None
    with LiveDisplay(renderer, quiet=json_out) as display:
        for ev in events:
            if speed and prev is not None:
                gap = (ev.ts - prev).total_seconds() / speed
                if gap > 0:
                    await asyncio.sleep(min(gap, 10.0))
            prev = ev.ts
            fold(view, ev)
            display.update(view)
    return view
