"""Writing a file so that a crash or a concurrent reader never sees half of it: a temporary file in
the same directory, fsynced, then renamed over the target (and the directory fsynced, so the rename
itself is durable). One helper for the store, the model registry, the credentials and the server
configs."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not every filesystem supports opening a directory.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, content: bytes | str | Callable[[BinaryIO], object], *, mode: int | None = None) -> None:
    """Write `content` (bytes, text, or a function given the open binary file) to `path` atomically.
    With `mode` the file has that mode from its creation (a secret is never readable by others, even
    briefly); the parent directory is created when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
