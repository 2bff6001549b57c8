"""The power-cut filesystem (bench/nemesis/lazyfs.py) loses exactly what a power cut loses: data
written and fsynced survives a cut, data written but never synced is gone (its file keeps the size
and bytes of its last sync), renames and creates are kept (metadata is immediate), a truncate is
lazy like a write, and a clean unmount flushes everything. Skipped without /dev/fuse, pyfuse3 or root."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.nemesis import lazyfs

pytestmark = pytest.mark.skipif(lazyfs.available() is not None, reason=str(lazyfs.available()))


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[tuple[lazyfs.LazyMount, Path, Path]]:
    m = lazyfs.mount(tmp_path / "backing", tmp_path / "mnt", log=tmp_path / "lazyfs.log")
    try:
        yield m, tmp_path / "mnt", tmp_path / "backing"
    finally:
        m.close()


def _write(path: Path, data: bytes, *, sync: bool) -> None:
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        if sync:
            os.fsync(f.fileno())


def test_synced_data_survives_a_cut_and_unsynced_data_is_lost(fs) -> None:
    m, mnt, backing = fs
    _write(mnt / "kept", b"a" * 10_000, sync=True)
    _write(mnt / "kept", b"b" * 5_000, sync=False)  # appended after the sync: lost
    _write(mnt / "lost", b"c" * 7_000, sync=False)
    assert (mnt / "kept").read_bytes() == b"a" * 10_000 + b"b" * 5_000  # readers see the cache
    assert (backing / "lost").stat().st_size == 0  # nothing reached the disk yet
    stats = m.cut()
    assert stats["how"] == "cut" and stats["dropped_files"] == 2, stats
    assert not os.path.ismount(mnt)
    assert (backing / "kept").read_bytes() == b"a" * 10_000
    assert (backing / "lost").read_bytes() == b""  # created (metadata), its data never synced


def test_fdatasync_counts_as_a_sync(fs) -> None:
    m, mnt, backing = fs
    with open(mnt / "f", "wb") as f:
        f.write(b"x" * 3000)
        f.flush()
        os.fdatasync(f.fileno())
    m.cut()
    assert (backing / "f").read_bytes() == b"x" * 3000


def test_rename_is_kept_and_its_unsynced_data_is_not(fs) -> None:
    m, mnt, backing = fs
    (mnt / "dir").mkdir()
    _write(mnt / "dir" / "tmp", b"old", sync=True)
    _write(mnt / "dir" / "tmp", b"new", sync=False)
    os.rename(mnt / "dir" / "tmp", mnt / "final")
    assert (mnt / "final").read_bytes() == b"oldnew"
    m.cut()
    assert not (backing / "dir" / "tmp").exists()
    assert (backing / "final").read_bytes() == b"old"


def test_truncate_is_lazy_until_synced(fs) -> None:
    m, mnt, backing = fs
    _write(mnt / "t", b"0123456789" * 1000, sync=True)
    with open(mnt / "t", "r+b") as f:
        f.truncate(5)
        assert os.fstat(f.fileno()).st_size == 5
    assert (mnt / "t").read_bytes() == b"01234"
    with open(mnt / "s", "wb") as f:
        f.write(b"z" * 9000)
        f.truncate(100)
        f.write(b"!")  # at offset 9000: the gap after the truncate reads as zeros
        f.flush()
        os.fsync(f.fileno())
    assert (mnt / "s").read_bytes() == b"z" * 100 + bytes(8900) + b"!"
    m.cut()
    assert (backing / "t").stat().st_size == 10_000  # the truncate was never synced
    assert (backing / "s").read_bytes() == b"z" * 100 + bytes(8900) + b"!"


def test_a_clean_unmount_flushes_the_cache(fs) -> None:
    m, mnt, backing = fs
    _write(mnt / "f", b"q" * 20_000, sync=False)
    (mnt / "gone").write_bytes(b"unlinked before the unmount")
    (mnt / "gone").unlink()
    stats = m.close()
    assert stats["how"] == "clean", stats
    assert (backing / "f").read_bytes() == b"q" * 20_000
    assert sorted(p.name for p in backing.iterdir()) == ["f"]
