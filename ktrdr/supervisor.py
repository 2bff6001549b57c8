"""The embedded stack's supervisor (`python -m ktrdr.supervisor`, started by `ktrdr up`): it restarts
any process of the stack that died (nats-server, the actors, the simulated gateway, the page, standby
orchestrators) with exponential backoff, brings a nats-server whose store hit a write error back once
its disk has room, and records both for `ktrdr status`.

A process is watched through its pid file under run/ (ktrdr.embedded): a pid file whose process is
gone means it died (kill -9, a crash), and it is started again through ktrdr.embedded's own start
functions (`embedded.restart`: same port, same environment, under the stack lock, tried once so that
`ktrdr up`/`down` always win: `down` stops this supervisor first, and a process it stopped has no pid
file, so it is never restarted). The first restart comes BACKOFF_FIRST_S after the death was seen;
one that dies again before it ran STABLE_S waits twice as long each time, up to BACKOFF_MAX_S. Each
restart is counted in the record (per process: how often, when, why), which `ktrdr status` shows. The
exit status is known only for a process this supervisor started (its child); one a CLI started is
"not running" (its status went to whoever reaped it).

nats-server keeps a file store's first write error (a full disk: "Critical write error ... no space
left on device") and from then on that stream stores nothing and answers no write, until the server
restarts, even once space is freed (its filestore's `werr` is never cleared). So the supervisor reads
each server's log from where that server started (run/<name>.logpos, written by ktrdr.embedded before
it starts one), and on such a line records it in run/store.json (ktrdr.disk.StoreHealth: what
`ktrdr status`, the CLI's error line and the job-manager's failure event read), waits until the
store's disk has `KTRDR_DISK_MIN_FREE` bytes free, and restarts that server on the same store and port
(clients reconnect by themselves; nothing acked is lost: the store is on disk). The record is written
in place into a file of fixed size made at start, so a full disk cannot keep it from being written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from ktrdr import disk, embedded
from ktrdr.config import Settings, settings

log = logging.getLogger("ktrdr.supervisor")
POLL_S = 0.25  # how often the logs and the disk are looked at: the delay a recovery adds
RECORD_BYTES = 16384  # run/store.json's fixed size (the record is padded with spaces to it)
MAX_LINE = 600  # of the server's log line kept in the record
MAX_RESTARTS_KEPT = 5
MAX_SCAN = 1 << 20  # log bytes read per look (a flood of lines is read over several looks)
BACKOFF_FIRST_S = 0.5  # from a death seen to its restart (a process that ran STABLE_S or more before)
BACKOFF_MAX_S = 30.0  # the longest wait between restarts of a process that keeps dying
STABLE_S = 60.0  # a restarted process up this long is healthy again: its next death waits BACKOFF_FIRST_S
MAX_START_ERROR = 200  # of a start error kept in the record


def scan(path: Path, offset: int) -> tuple[int, str | None]:
    """Complete lines of a log from `offset`: (where the next look starts, the first line saying a
    store stopped writing, or None). A log shorter than `offset` was replaced: read it from 0."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < offset:
                offset = 0
            f.seek(offset)
            data = f.read(MAX_SCAN)
    except FileNotFoundError:
        return offset, None
    end = data.rfind(b"\n") + 1 if len(data) < MAX_SCAN else len(data)
    for raw in data[:end].splitlines():
        line = raw.decode(errors="replace")
        if any(m in line for m in disk.WRITE_ERROR_MARKERS):
            return offset + end, line.strip()[:MAX_LINE]
    return offset + end, None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Record:
    """run/store.json, rewritten in place (never truncated or renamed: no new disk block needed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # A fresh store state per supervisor: a write error is looked for again in the current server's
        # log. The restart counts of a stack still up (a supervisor that died and was started again:
        # `ktrdr down` removes the record) are kept, and this restart is counted as one of its own.
        old = disk.read_health_at(path)
        self.health = disk.StoreHealth()
        if old is not None:
            self.health.restarts, self.health.processes = old.restarts, old.processes
            me = self.health.processes.setdefault("supervisor", disk.ProcessRecord())
            me.restarts, me.last_at, me.last_reason = me.restarts + 1, _now(), "not running"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.write()  # its full size now, while there is room: later writes reuse these blocks

    def write(self) -> None:
        self.health.restarts = self.health.restarts[-MAX_RESTARTS_KEPT:]
        self.health.updated = _now()
        data = msgspec.json.encode(self.health)
        while len(data) > RECORD_BYTES and self.health.restarts:  # the oldest go first, never the counts
            self.health.restarts.pop(0)
            data = msgspec.json.encode(self.health)
        try:
            os.pwrite(self._fd, data.ljust(RECORD_BYTES), 0)
        except OSError as exc:
            log.error("could not write %s: %s", self.path, exc)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


@dataclass
class Watch:
    """One server's log, read from where that server started."""

    name: str
    log: Path
    started_at: int = -1  # the logpos the current server started at
    offset: int = 0
    error: str | None = None  # its write-error line, until it is restarted
    error_since: float = 0.0


def _logpos(s: Settings, name: str) -> int | None:
    """Where the running server's lines begin in its log (None: not recorded)."""
    try:
        return int((s.run_dir / f"{name}.logpos").read_text().strip())
    except (OSError, ValueError):
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def look(s: Settings, watches: dict[str, Watch], record: Record) -> None:
    """One look: new write errors recorded; servers with one restarted when their disk has room."""
    for name in embedded.shape(s).nats_names:
        w = watches.setdefault(name, Watch(name, s.log_dir / f"{name}.log"))
        pos = _logpos(s, name)
        if pos is None:  # a server started before there was a supervisor: its older lines are not read
            pos = w.started_at if w.started_at >= 0 else _size(w.log)
        if pos != w.started_at:  # a (re)started server: its own lines only
            w.started_at, w.offset, w.error = pos, pos, None
        before = w.offset
        w.offset, line = scan(w.log, w.offset)
        if w.offset != before:  # the server wrote: keep room reserved past its log's new end
            embedded.reserve_tail(w.log)
        if line is not None and w.error is None:
            w.error, w.error_since = line, time.monotonic()
            log.error("%s stopped storing writes: %s", name, line)
            record.health.state, record.health.line = "write_error", line
            record.health.since = _now()
    broken = [w for w in watches.values() if w.error is not None]
    if not broken:
        return
    store = disk.store_dir(s)
    free = disk.free_bytes(store)
    record.health.disk, record.health.free_bytes = str(store), free
    record.health.needed_bytes = s.disk_min_free_bytes
    if free < s.disk_min_free_bytes:
        record.write()
        return
    for w in broken:
        waited = time.monotonic() - w.error_since
        log.warning("restarting %s: its store stopped writing (%s); %s free on %s now", w.name, w.error,
                    disk.human(free), store)
        if not embedded.restart_nats(s, w.name):  # `up` or `down` holds the stack: next look
            continue
        record.health.restarts.append({"at": _now(), "process": w.name,
                                       "reason": "store write error (disk full); space is back",
                                       "waited_s": round(waited, 2)})
        w.error = None
    if not any(w.error is not None for w in watches.values()):
        record.health.state, record.health.line = "ok", ""
    record.write()


@dataclass
class Tracked:
    """One supervised process, as this supervisor has seen it."""

    name: str
    dead_since: float | None = None  # when its death was seen (None: running, or stopped on purpose)
    restarted_at: float = float("-inf")
    reason: str = ""


def backoff_s(attempts: int) -> float:
    """The wait from a death seen to the restart, after `attempts` restarts in a row without a stable run."""
    return min(BACKOFF_FIRST_S * 2.0 ** attempts, BACKOFF_MAX_S)


def exit_reason(name: str, pid: int | None) -> str:
    """Why a process is gone, as far as this process can know: the exit status of its own child."""
    proc = embedded.children.get(name)
    if proc is None or proc.pid != pid or proc.poll() is None:
        return "not running"
    code = proc.returncode
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exited with code {code}"


def look_processes(s: Settings, tracked: dict[str, Tracked], record: Record, now: float) -> None:
    """One look at every supervised process: a dead one is restarted once its backoff has passed."""
    for proc in embedded.children.values():
        proc.poll()  # reap the children this supervisor started (a zombie reads as dead, but holds a pid)
    changed = False
    for name in embedded.supervised_names(s):
        t = tracked.setdefault(name, Tracked(name))
        rec = record.health.processes.setdefault(name, disk.ProcessRecord())
        pid = embedded.read_pid(s, name)
        if pid is None or embedded.is_alive(s, name):  # running, or stopped on purpose (no pid file)
            t.dead_since = None
            if rec.state:  # started again meanwhile (by `ktrdr up`), or stopped: nothing is pending
                rec.state, changed = "", True
            if rec.attempts and now - t.restarted_at >= STABLE_S:
                rec.attempts, changed = 0, True
            continue
        if t.dead_since is None:
            t.dead_since, t.reason = now, exit_reason(name, pid)
            log.warning("%s (pid %s) is gone: %s", name, pid, t.reason)
        if now < t.dead_since + backoff_s(rec.attempts):
            changed |= rec.state != "backoff"
            rec.state = "backoff"
            continue
        try:
            done = embedded.restart(s, name)
        except Exception as exc:  # it could not start: counted as an attempt, tried again after a longer wait
            log.exception("restarting %s failed", name)
            rec.attempts, rec.state, t.dead_since = rec.attempts + 1, f"failed: {exc}"[:MAX_START_ERROR], now
            changed = True
            continue
        if not done:  # `up` or `down` holds the stack (or it runs again): look again next time
            continue
        rec.restarts, rec.attempts, rec.state = rec.restarts + 1, rec.attempts + 1, ""
        rec.last_at, rec.last_reason = _now(), t.reason
        t.dead_since, t.restarted_at, changed = None, now, True
        log.warning("restarted %s (%s; restart %d, %d in a row)", name, t.reason, rec.restarts, rec.attempts)
    if changed:
        record.write()


def run(s: Settings, stop: threading.Event) -> None:
    record = Record(disk.health_file(s))
    watches: dict[str, Watch] = {}
    tracked: dict[str, Tracked] = {}
    try:
        while not stop.is_set():
            steps = (lambda: look(s, watches, record), lambda: look_processes(s, tracked, record, time.monotonic()))
            for step in steps:
                try:
                    step()
                except Exception:  # a look that failed (a full disk, a server mid-restart) is tried again
                    log.exception("supervisor look failed")
            stop.wait(POLL_S)
    finally:
        record.close()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    s = settings()
    log.info("supervising %s under %s", ", ".join(embedded.supervised_names(s)), s.home)
    run(s, stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
