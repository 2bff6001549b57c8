"""What a full disk looks like from here, and the one line a user reads about it.

A write can fail for want of space in two places: our own files (the cache, a CSV export, logs: an
OSError with errno ENOSPC or EDQUOT) and nats-server's JetStream store. The server shows the second
in three ways: an answer "insufficient resources" (its `max_file_store` reached: writes resume once
the streams hold less), a store error carrying the OS's "no space left on device", or no answer at
all: a stream whose file store hit an I/O error ("Critical write error" in the server's log) stops
acknowledging writes and stays so until the server restarts (nats-server's filestore keeps the
error; its source: `fs.werr`). The embedded stack's supervisor (ktrdr.supervisor) reads the server's
log for that line, records it in `run/store.json` (a `StoreHealth`, which also counts the restarts of
every crashed process of the stack: a `ProcessRecord` each) and restarts the server once the disk has
room again; `explain` turns any of these into a `DiskFullError` naming the disk, so neither
the CLI nor a failure event blames the network for a full disk. Standard library and msgspec only.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Literal

import msgspec

from ktrdr.config import Settings
from ktrdr.errors import DiskFullError

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# nats-server's JetStream error codes for a store out of room: 10023 insufficient resources, 10047
# storage resources exceeded (JSStorageResourcesExceededErr).
NO_SPACE_ERR_CODES = frozenset({10023, 10047})
NO_SPACE_TEXT = ("no space left on device", "insufficient resources", "resources exceeded", "disk quota exceeded")
# The server's log lines that mean a stream (or a cluster node's log) stopped storing until a restart.
WRITE_ERROR_MARKERS = ("Critical write error", "critical write error", "JetStream failed to store a msg")


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding `path` (or the nearest
    folder above it that exists)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def human(n: int) -> str:
    """A byte count as people read it: 476 KB, 9.7 MB, 3.2 GB."""
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit in ("bytes", "KB") else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def is_no_space(exc: BaseException) -> bool:
    """Whether `exc` says a disk is full: ours (ENOSPC) or the NATS server's store."""
    if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
        return True
    if getattr(exc, "err_code", None) in NO_SPACE_ERR_CODES:
        return True
    text = str(getattr(exc, "description", "") or "").lower()
    return any(t in text for t in NO_SPACE_TEXT)


class ProcessRecord(msgspec.Struct, kw_only=True):
    """What the supervisor did about one process of the embedded stack."""

    restarts: int = 0  # since `ktrdr up` started this stack (`ktrdr down` removes the record)
    last_at: str | None = None  # ISO UTC of the last restart
    last_reason: str = ""  # "exited with code N", "killed by SIGKILL", "not running" (exit status unknown)
    attempts: int = 0  # restarts in a row without a stable run since: the next waits 0.5 s * 2^attempts
    state: str = ""  # "" running; "backoff" (dead, the next restart is due); "failed: ..." (a start failed)


class StoreHealth(msgspec.Struct, kw_only=True):
    """The supervisor's record (run/store.json): the embedded server's store, and every process it
    restarted."""

    state: Literal["ok", "write_error"] = "ok"  # write_error: a stream stopped storing (restart pending)
    since: str | None = None  # ISO UTC of the write error
    line: str = ""  # the server's log line that said so
    disk: str = ""  # the store's folder
    free_bytes: int = 0  # free on that disk when last looked at
    needed_bytes: int = 0  # free space the supervisor waits for before it restarts the server
    # the last restarts of a server for its store: {"at", "process", "reason", "waited_s"}
    restarts: list[dict[str, object]] = msgspec.field(default_factory=list)
    processes: dict[str, ProcessRecord] = msgspec.field(default_factory=dict)  # by process name
    updated: str | None = None  # ISO UTC of the supervisor's last write

    def summary(self) -> str:
        """One line for `ktrdr status`."""
        if self.state == "write_error":
            return (f"store write error since {self.since}: disk {self.disk} full ({human(self.free_bytes)} free); "
                    f"restarts by itself once {human(self.needed_bytes)} are free")
        if self.restarts:
            last = self.restarts[-1]
            return f"restarted at {last.get('at')} ({last.get('reason')})"
        return ""


def health_file(settings: Settings) -> Path:
    return settings.run_dir / "store.json"


def read_health(settings: Settings) -> StoreHealth | None:
    return read_health_at(health_file(settings))


def read_health_at(path: Path) -> StoreHealth | None:
    try:
        return msgspec.json.decode(path.read_bytes().rstrip(), type=StoreHealth)
    except (OSError, msgspec.DecodeError):
        return None


def store_dir(settings: Settings) -> Path:
    return settings.home / "nats"


def full(path: Path | str, what: str = "") -> DiskFullError:
    """The one error for a full disk, naming it and what to do."""
    p = Path(path)
    try:
        free = f"{human(free_bytes(p))} free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(f"the disk holding {p} is full ({free}){': ' + what if what else ''}", path=str(p))


def explain(exc: BaseException, settings: Settings) -> DiskFullError | None:
    """The DiskFullError behind `exc`, when a full disk is what made it fail: ENOSPC in a file of ours
    (the file named), a store error from the server, or a write the server did not acknowledge while
    the embedded supervisor has recorded a store write error. None otherwise."""
    if isinstance(exc, DiskFullError):
        return exc
    if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
        where = Path(exc.filename) if exc.filename else settings.home
        if where.is_dir():
            return full(where)
        return full(where.parent, f"could not write {where.name}")
    # The record is there when this host runs the embedded stack (its actors have NATS_URL set too).
    health = read_health(settings)
    stuck = health is not None and health.state == "write_error"
    if getattr(exc, "err_code", None) in NO_SPACE_ERR_CODES:
        store = health.disk if stuck and health else ("" if settings.nats_url else str(store_dir(settings)))
        return DiskFullError(f"the NATS server's JetStream store{f' ({store})' if store else ''} is full: it "
                             "answered 'insufficient resources' (its max_file_store is reached, or its disk is full)",
                             hint="free space, or delete what the streams no longer need", path=store)
    if is_no_space(exc):
        return _store_full(settings, health if stuck else None)
    # A write no stream acknowledged in time (ktrdr.transport.publish's NotStoredError is one).
    if stuck and (isinstance(exc, TimeoutError) or getattr(exc, "code", None) == "not_stored"):
        return _store_full(settings, health)
    return None


def _store_full(settings: Settings, health: StoreHealth | None) -> DiskFullError:
    if health is None and settings.nats_url:
        return DiskFullError("the NATS server's JetStream store is out of space (it refused a write)",
                             hint="free space on the server's disk; see its log for 'Critical write error'")
    where = Path(health.disk) if health is not None and health.disk else store_dir(settings)
    return full(where, "the NATS server cannot store writes; free space there (the embedded server restarts "
                "by itself once there is room; `ktrdr status` says when)")
