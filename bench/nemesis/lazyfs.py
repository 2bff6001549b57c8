"""A FUSE filesystem that loses what a power cut loses, in the spirit of LazyFS (Jepsen's tool).

`python -m bench.nemesis.lazyfs BACKING MOUNT` mounts a passthrough of the directory BACKING on MOUNT
(run as root: pyfuse3, /dev/fuse). File data written through it is kept in this process's memory, a
page cache of its own, and reaches BACKING only when the file is fsynced or fdatasynced (close does
not flush: it does not on Linux either). SIGUSR1 is the power cut: every write not yet synced is
dropped and the filesystem unmounts; BACKING is then what a disk holds after power comes back, and a
new mount of it (or BACKING itself) is the machine after reboot. SIGTERM is a clean shutdown: the
cache is flushed first, as an unmount would. Metadata (create, mkdir, rename, unlink, chmod) goes to
BACKING at once, as LazyFS does by default: only file contents and sizes are lazy.

`mount()` / `LazyMount.cut()` drive it from another process; `--stats FILE` writes, on exit, how many
fsyncs it served and how many unsynced bytes a cut dropped (JSON), so a run can say what was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import functools
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

PAGE = 4096
# How long a mount or an unmount may take before the driver gives up (a FUSE mount is milliseconds).
MOUNT_TIMEOUT_S = 15.0
# Attributes the kernel may cache: every change comes through this process, so caching is safe.
ATTR_TIMEOUT_S = 1.0
NO_FLOOR = 1 << 62

T = TypeVar("T")

try:  # optional: the [faults] extra; available() says why a mount cannot be made without it
    import pyfuse3
    _Operations: Any = pyfuse3.Operations
except ImportError:
    pyfuse3 = None  # type: ignore[assignment]
    _Operations = object


def available() -> str | None:
    """None when a lazyfs can be mounted here, else why not (for a test's skip reason)."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse (FUSE is not available in this kernel or container)"
    if pyfuse3 is None:
        return "pyfuse3 is not installed (pip install '.[faults]'; needs Debian fuse3, libfuse3-dev, pkg-config)"
    if os.geteuid() != 0:
        return "mounting a FUSE filesystem here needs root"
    return None


@dataclass
class _File:
    """One file's cached state: the pages written since its last sync, its logical size, and the
    lowest size it was truncated to since then (backing bytes past that floor read as zeros)."""

    fd: int
    size: int
    opens: int = 0
    dirty: dict[int, bytearray] = field(default_factory=dict)
    floor: int = NO_FLOOR
    unlinked: bool = False

    @property
    def pending(self) -> bool:
        return bool(self.dirty) or self.floor != NO_FLOOR or self.size != os.fstat(self.fd).st_size

    def _backing(self, off: int, length: int) -> bytes:
        valid = min(os.fstat(self.fd).st_size, self.floor)
        got = os.pread(self.fd, max(0, min(length, valid - off)), off) if off < valid else b""
        return got + bytes(length - len(got))

    def read(self, off: int, size: int) -> bytes:
        end = min(off + size, self.size)
        if end <= off:
            return b""
        buf = bytearray(self._backing(off, end - off))
        for p in range(off // PAGE, (end - 1) // PAGE + 1):
            page = self.dirty.get(p)
            if page is None:
                continue
            lo, hi = max(off, p * PAGE), min(end, (p + 1) * PAGE)
            buf[lo - off:hi - off] = page[lo - p * PAGE:hi - p * PAGE]
        return bytes(buf)

    def write(self, off: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            p, inner = divmod(off + pos, PAGE)
            page = self.dirty.get(p)
            if page is None:
                page = self.dirty[p] = bytearray(self.read(p * PAGE, PAGE).ljust(PAGE, b"\0"))
            n = min(PAGE - inner, len(data) - pos)
            page[inner:inner + n] = data[pos:pos + n]
            pos += n
        self.size = max(self.size, off + len(data))

    def truncate(self, size: int) -> None:
        if size < self.size:
            last = size // PAGE
            for p in [p for p in self.dirty if p > last or (p == last and size % PAGE == 0)]:
                del self.dirty[p]
            if last in self.dirty:
                self.dirty[last][size % PAGE:] = bytes(PAGE - size % PAGE)
            self.floor = min(self.floor, size)
        self.size = size

    def sync(self) -> int:
        """Write the cached state to the backing file and fsync it; the bytes written."""
        written = 0
        if self.floor < os.fstat(self.fd).st_size:
            os.ftruncate(self.fd, self.floor)
        for p in sorted(self.dirty):
            n = min(PAGE, self.size - p * PAGE)
            if n > 0:
                written += os.pwrite(self.fd, bytes(self.dirty[p][:n]), p * PAGE)
        os.ftruncate(self.fd, self.size)
        os.fsync(self.fd)
        self.dirty.clear()
        self.floor = NO_FLOOR
        return written

    def unsynced_bytes(self) -> int:
        return len(self.dirty) * PAGE + (self.size != os.fstat(self.fd).st_size)


def _errors(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """An OSError from the backing directory becomes the same errno for the caller of the mount."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await fn(*args, **kwargs)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    return wrapper


class LazyOps(_Operations):  # type: ignore[misc]
    """The pyfuse3 operations of a lazy passthrough of the directory `backing`."""

    def __init__(self, backing: bytes) -> None:
        super().__init__()
        self.backing = backing
        self.paths: dict[int, bytes] = {pyfuse3.ROOT_INODE: backing}
        self.files: dict[int, _File] = {}
        self.dirs: dict[int, int] = {}
        self.fsyncs = 0
        self.synced_bytes = 0
        self.dead = False

    # -- inodes and attributes ---------------------------------------------------------------
    def _path(self, inode: int) -> bytes:
        if self.dead:
            raise pyfuse3.FUSEError(errno.EIO)
        try:
            return self.paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _ino(self, st: os.stat_result, path: bytes) -> int:
        ino = pyfuse3.ROOT_INODE if path == self.backing else st.st_ino
        self.paths[ino] = path
        return ino

    def _attrs(self, st: os.stat_result, ino: int) -> Any:
        a = pyfuse3.EntryAttributes()
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size", "st_atime_ns",
                     "st_mtime_ns", "st_ctime_ns"):
            setattr(a, name, getattr(st, name))
        f = self.files.get(ino)
        if f is not None:
            a.st_size = f.size
        a.st_ino = ino
        a.st_blksize = PAGE
        a.st_blocks = (a.st_size + 511) // 512
        a.generation = 0
        a.entry_timeout = a.attr_timeout = ATTR_TIMEOUT_S
        return a

    def _stat(self, ino: int) -> Any:
        f = self.files.get(ino)
        st = os.fstat(f.fd) if f is not None and f.unlinked else os.lstat(self._path(ino))
        return self._attrs(st, ino)

    @_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        path = os.path.join(self._path(parent_inode), name)
        st = os.lstat(path)
        return self._attrs(st, self._ino(st, path))

    @_errors
    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return self._stat(inode)

    @_errors
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> Any:
        path = self._path(inode)
        if fields.update_size:
            f = self.files.get(inode)
            if f is not None:
                f.truncate(attr.st_size)
            else:  # not open here: a truncate(2) by path goes through a cached state too
                f = self._open_state(inode, path)
                f.truncate(attr.st_size)
                self._maybe_close(inode)
        if fields.update_mode:
            os.chmod(path, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            os.chown(path, attr.st_uid if fields.update_uid else -1, attr.st_gid if fields.update_gid else -1)
        if fields.update_atime or fields.update_mtime:
            st = os.lstat(path)
            os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                               attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns))
        return self._stat(inode)

    @_errors
    async def statfs(self, ctx: Any) -> Any:
        st = os.statvfs(self.backing)
        out = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                     "f_favail", "f_namemax"):
            setattr(out, name, getattr(st, name))
        return out

    async def forget(self, inode_list: Any) -> None:
        return None  # paths are kept (a bench-sized tree); files are dropped when unlinked and closed

    # -- directories (metadata is immediate) ---------------------------------------------------
    @_errors
    async def opendir(self, inode: int, ctx: Any) -> int:
        self._path(inode)
        return inode

    @_errors
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        path = self._path(fh)
        names = sorted(os.listdir(path))
        for i, name in enumerate(names[start_id:], start_id):
            full = os.path.join(path, name)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue
            if not pyfuse3.readdir_reply(token, name, self._attrs(st, self._ino(st, full)), i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        return None

    @_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        fd = os.open(self._path(fh), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        path = os.path.join(self._path(parent_inode), name)
        os.mkdir(path, mode & ~ctx.umask)
        st = os.lstat(path)
        return self._attrs(st, self._ino(st, path))

    @_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        path = os.path.join(self._path(parent_inode), name)
        ino = os.lstat(path).st_ino
        os.rmdir(path)
        self.paths.pop(ino, None)

    @_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        path = os.path.join(self._path(parent_inode), name)
        ino = os.lstat(path).st_ino
        os.unlink(path)
        self._gone(ino)

    def _gone(self, ino: int) -> None:
        self.paths.pop(ino, None)
        f = self.files.get(ino)
        if f is not None:
            f.unlinked = True
            self._maybe_close(ino)

    @_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: Any) -> None:
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)  # RENAME_EXCHANGE / NOREPLACE: not needed here
        old = os.path.join(self._path(parent_inode_old), name_old)
        new = os.path.join(self._path(parent_inode_new), name_new)
        ino = os.lstat(old).st_ino
        try:
            replaced: int | None = os.lstat(new).st_ino
        except FileNotFoundError:
            replaced = None
        os.rename(old, new)
        if replaced is not None and replaced != ino:
            self._gone(replaced)
        prefix = old + b"/"
        for i, p in list(self.paths.items()):
            if p.startswith(prefix):
                self.paths[i] = new + p[len(old):]
        self.paths[ino] = new

    # -- file data (lazy) ----------------------------------------------------------------------
    def _open_state(self, ino: int, path: bytes) -> _File:
        f = self.files.get(ino)
        if f is None:
            fd = os.open(path, os.O_RDWR)
            f = self.files[ino] = _File(fd=fd, size=os.fstat(fd).st_size)
        return f

    def _maybe_close(self, ino: int) -> None:
        f = self.files.get(ino)
        if f is None or f.opens > 0:
            return
        if f.unlinked or not f.pending:  # an unlinked file's data is gone; a clean one needs no cache
            os.close(f.fd)
            del self.files[ino]

    @_errors
    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        f = self._open_state(inode, self._path(inode))
        f.opens += 1
        if flags & os.O_TRUNC:
            f.truncate(0)
        return pyfuse3.FileInfo(fh=inode)

    @_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        path = os.path.join(self._path(parent_inode), name)
        fd = os.open(path, os.O_CREAT | os.O_RDWR | (flags & os.O_EXCL), mode & ~ctx.umask)
        st = os.fstat(fd)
        ino = self._ino(st, path)
        stale = self.files.pop(ino, None)  # a reused inode number of an unlinked file
        if stale is not None:
            os.close(stale.fd)
        f = self.files[ino] = _File(fd=fd, size=st.st_size, opens=1)
        if flags & os.O_TRUNC:
            f.truncate(0)
        return pyfuse3.FileInfo(fh=ino), self._attrs(st, ino)

    def _file(self, fh: int) -> _File:
        if self.dead:
            raise pyfuse3.FUSEError(errno.EIO)
        return self.files[fh]

    @_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self._file(fh).read(off, size)

    @_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self._file(fh).write(off, buf)
        return len(buf)

    async def flush(self, fh: int) -> None:
        return None  # close(2) does not sync: the data stays in the cache

    @_errors
    async def release(self, fh: int) -> None:
        f = self.files.get(fh)
        if f is not None:
            f.opens -= 1
            self._maybe_close(fh)

    @_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        self.synced_bytes += self._file(fh).sync()
        self.fsyncs += 1

    # -- power ----------------------------------------------------------------------------------
    def cut(self) -> tuple[int, int]:
        """Drop every unsynced write; (bytes, files) dropped."""
        dropped = sum(f.unsynced_bytes() for f in self.files.values())
        files = sum(1 for f in self.files.values() if f.pending)
        self.dead = True
        for f in self.files.values():
            f.dirty.clear()
            os.close(f.fd)
        self.files.clear()
        return dropped, files

    def flush_all(self) -> None:
        for ino in list(self.files):
            f = self.files[ino]
            if not f.unlinked and f.pending:
                self.synced_bytes += f.sync()


def make_operations(backing: bytes) -> Any:
    """The operations of a lazy passthrough of `backing` (pyfuse3 must be installed)."""
    if pyfuse3 is None:
        raise RuntimeError(available() or "pyfuse3 is missing")
    return LazyOps(backing)


async def _serve(ops: Any) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    outcome: dict[str, Any] = {"how": "unmounted"}

    def on_cut() -> None:
        dropped, files = ops.cut()
        outcome.update(how="cut", dropped_bytes=dropped, dropped_files=files)
        pyfuse3.terminate()

    def on_term() -> None:
        ops.flush_all()
        outcome.update(how="clean")
        pyfuse3.terminate()

    loop.add_signal_handler(signal.SIGUSR1, on_cut)
    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, on_term)
    await pyfuse3.main()
    return outcome


def main(argv: list[str] | None = None) -> int:
    import pyfuse3.asyncio

    parser = argparse.ArgumentParser(prog="python -m bench.nemesis.lazyfs", description=__doc__)
    parser.add_argument("backing")
    parser.add_argument("mount")
    parser.add_argument("--stats", help="write what it synced and what a cut dropped here (JSON) on exit")
    args = parser.parse_args(argv)
    pyfuse3.asyncio.enable()
    ops = make_operations(os.fsencode(os.path.abspath(args.backing)))
    options = set(pyfuse3.default_options) | {"fsname=ktrdr-lazyfs"}
    pyfuse3.init(ops, args.mount, options)
    try:
        outcome = asyncio.run(_serve(ops))
    finally:
        pyfuse3.close(unmount=True)
    outcome.update(fsyncs=ops.fsyncs, synced_bytes=ops.synced_bytes)
    if args.stats:
        Path(args.stats).write_text(json.dumps(outcome))
    return 0


# --- driving it from another process ------------------------------------------------------------------

def _wait(predicate: Callable[[], bool], what: str, timeout: float = MOUNT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"lazyfs: {what} not within {timeout} s")
        time.sleep(0.01)


@dataclass
class LazyMount:
    """A running lazyfs process: `cut()` is the power cut, `close()` a clean unmount."""

    backing: Path
    mount: Path
    proc: subprocess.Popen[bytes]
    stats_file: Path

    def _stop(self, sig: int) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(MOUNT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(MOUNT_TIMEOUT_S)
        if os.path.ismount(self.mount):  # it died without unmounting: detach what is left
            subprocess.run(["umount", "-l", str(self.mount)], capture_output=True, check=False)
        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads(self.stats_file.read_text()))
        return {"how": "died", "returncode": self.proc.returncode}

    def cut(self) -> dict[str, Any]:
        """Power off: drop every unsynced write and unmount. What it dropped and synced before."""
        return self._stop(signal.SIGUSR1)

    def close(self) -> dict[str, Any]:
        """A clean unmount: the cache is flushed to the backing directory first."""
        return self._stop(signal.SIGTERM)


def mount(backing: Path, mount_point: Path, log: Path | None = None) -> LazyMount:
    """Mount a lazyfs of `backing` on `mount_point` (both created) in a process of its own."""
    backing.mkdir(parents=True, exist_ok=True)
    mount_point.mkdir(parents=True, exist_ok=True)
    stats = mount_point.parent / f".{mount_point.name}.lazyfs-stats.json"
    stats.unlink(missing_ok=True)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    out = open(log, "ab") if log is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen([sys.executable, "-m", "bench.nemesis.lazyfs", str(backing), str(mount_point),
                                 "--stats", str(stats)], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]
    lm = LazyMount(backing, mount_point, proc, stats)
    try:
        _wait(lambda: os.path.ismount(mount_point) or proc.poll() is not None, "the mount")
    except TimeoutError:
        lm.close()
        raise
    if proc.poll() is not None:
        raise RuntimeError(f"lazyfs exited with {proc.returncode} before mounting {mount_point} (see {log})")
    return lm


if __name__ == "__main__":
    sys.exit(main())
