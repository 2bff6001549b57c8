"""The embedded stack's supervisor (`python -m ktrdr.supervisor`, started by `ktrdr up`): it brings a
nats-server whose store hit a write error back once its disk has room, and says so.

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
RECORD_BYTES = 4096  # run/store.json's fixed size (the record is padded with spaces to it)
MAX_LINE = 600  # of the server's log line kept in the record
MAX_RESTARTS_KEPT = 5
MAX_SCAN = 1 << 20  # log bytes read per look (a flood of lines is read over several looks)


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


class Record:
    """run/store.json, rewritten in place (never truncated or renamed: no new disk block needed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # A fresh record per supervisor (one per `ktrdr up`): a write error is looked for again in the
        # current server's log, and `ktrdr status` shows only this stack's restarts.
        self.health = disk.StoreHealth()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.write()  # its full size now, while there is room: later writes reuse these blocks

    def write(self) -> None:
        self.health.restarts = self.health.restarts[-MAX_RESTARTS_KEPT:]
        data = msgspec.json.encode(self.health)[:RECORD_BYTES]
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
            record.health.since = datetime.now(UTC).isoformat(timespec="seconds")
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
        embedded.restart_nats(s, w.name)
        record.health.restarts.append({"at": datetime.now(UTC).isoformat(timespec="seconds"), "process": w.name,
                                       "reason": "store write error (disk full); space is back",
                                       "waited_s": round(waited, 2)})
        w.error = None
    record.health.state, record.health.line = "ok", ""
    record.write()


def run(s: Settings, stop: threading.Event) -> None:
    record = Record(disk.health_file(s))
    watches: dict[str, Watch] = {}
    try:
        while not stop.is_set():
            try:
                look(s, watches, record)
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
    log.info("watching the stores of %s under %s", ", ".join(embedded.shape(s).nats_names), s.home)
    run(s, stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
