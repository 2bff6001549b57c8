"""A full disk (issue 18, F11), for real: a small tmpfs mounted as the cache's folder or as KTRDR_HOME
(the embedded stack's store, logs and cache), filled with a filler file, then freed.

What must hold: the user reads one line naming the full disk (never "cannot reach NATS" when the server
answered); the cache turns a full disk into a cache miss and leaves no temp file, sweeps the ones dead
writers left and keeps its own bounds; a nats-server whose store stopped writing (nats-server keeps
that state until it restarts) is restarted by the embedded supervisor once space is back, saying so
in `ktrdr status`; a load queued meanwhile then runs; no orphaned chunk stays in BARS; nothing stored
before is lost or changed (digest-checked reads). Skipped where mounting a tmpfs is not permitted.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ktrdr.config import Settings
from ktrdr.data.store import DigestCache
from ktrdr.embedded import free_port
from tests.helpers import run_ktrdr

MiB = 1 << 20


def _mount(path: Path, size: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {res.stderr.strip()[:200]}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    _mount(mnt, 4 * MiB)
    yield mnt
    _umount(mnt)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(path: Path, leave: int = 0, name: str = "filler") -> Path:
    """A file taking all of the disk's free space but `leave` bytes."""
    filler = path / name
    size = max(_free(path) - leave, 0)
    with open(filler, "wb") as f:
        if size:
            os.posix_fallocate(f.fileno(), 0, size)
    return filler


def _digest(data: bytes) -> str:
    return "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()


def _parts(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".part.")) if root.exists() else []


# ------------------------------------------------------------------------------------------ the cache
def test_a_full_cache_disk_is_a_cache_miss_that_leaves_no_temp_file(small_disk):
    """Before: the ENOSPC of the cache file failed the whole write (`data import` said "cannot reach
    NATS" for bars that were in fact stored)."""
    cache = DigestCache(small_disk / "cache")
    _fill(small_disk, leave=64 * 1024)
    data = os.urandom(1 * MiB)
    assert cache.put(_digest(data), data) is None
    assert _parts(small_disk / "cache") == []
    assert cache.lookup(_digest(data)) is None


def test_temp_files_of_dead_writers_are_swept_and_a_live_writers_kept(tmp_path):
    cache = DigestCache(tmp_path / "cache")
    f, live = cache.temp()  # this process: a download in progress
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
    dead = tmp_path / "cache" / f".part.{dead_pid}.abc.tmp"
    dead.write_bytes(b"x" * 1000)  # fresh: the age rule alone would keep it for an hour
    cache.sweep()
    assert not dead.exists() and live.exists()
    f.close()
    live.unlink()


def test_the_cache_keeps_its_size_bound_and_the_free_space_of_its_disk(small_disk):
    root = small_disk / "cache"
    blobs = [bytes([i]) * (512 * 1024) for i in range(5)]
    bounded = DigestCache(root, max_bytes=1200 * 1024)
    for i, b in enumerate(blobs[:3]):
        path = bounded.put(_digest(b), b)
        assert path is not None
        os.utime(path, (1000 + i, 1000 + i))
    assert bounded.lookup(_digest(blobs[0])) is None  # the oldest went: 3 x 512 KiB > 1200 KiB
    for i in (1, 2):
        path = bounded.lookup(_digest(blobs[i]))
        assert path is not None
        os.utime(path, (1000 + i, 1000 + i))  # a lookup made it recent: put the order back
    # The disk's free space is a bound too: it evicts the oldest rather than leave less than min_free,
    # and caches nothing when even that would not do.
    floor = DigestCache(root, max_bytes=64 * MiB, min_free=_free(small_disk) - 400 * 1024)
    assert floor.put(_digest(blobs[3]), blobs[3]) is not None
    assert floor.lookup(_digest(blobs[1])) is None and floor.lookup(_digest(blobs[2])) is not None
    assert DigestCache(root, min_free=_free(small_disk) + 2 * MiB).put(_digest(blobs[4]), blobs[4]) is None
    assert _parts(root) == []


# ----------------------------------------------------------------------------------- orphaned chunks
async def test_orphaned_chunks_are_retired_and_a_put_in_progress_and_live_objects_are_not(client):
    from ktrdr.transport import objects

    live = await objects.put(client.js, objects.BARS, "AAPL/1h", b"live" * 200_000)
    half = "halfwrittenput0000000001"  # a put killed after its first chunk: no meta record points here
    await client.js.publish(f"$O.BARS.C.{half}", b"x" * 1000, headers={"Nats-Msg-Id": f"{half}.0"})
    assert await objects.sweep_orphans(client.js, objects.BARS, older_than_s=3600) == 0  # could be in progress
    assert await objects.sweep_orphans(client.js, objects.BARS, older_than_s=0) == 1
    # Retired, not purged (no role may purge, issue 18 F5): one empty marker is all that is left of it,
    # and a second sweep finds nothing more to do.
    info = await client.js.stream_info("OBJ_BARS", subjects_filter="$O.BARS.C.>")
    assert (info.state.subjects or {}).get(f"$O.BARS.C.{half}") == 1
    assert (info.state.subjects or {}).get(f"$O.BARS.C.{live.nuid}", 0) > 1  # the live object's chunks stay
    assert not (await client.js.get_last_msg("OBJ_BARS", f"$O.BARS.C.{half}")).data
    assert await objects.sweep_orphans(client.js, objects.BARS, older_than_s=0) == 0
    got = await objects.get(client.js, objects.BARS, "AAPL/1h", max_bytes=1 << 30)
    assert got is not None and bytes(got[0]) == b"live" * 200_000


def test_a_servers_log_has_room_for_its_write_error_lines_on_a_full_disk(small_disk):
    """The supervisor acts on the server's "Critical write error" line: it must land on the full disk."""
    from ktrdr.embedded import reserve_tail

    log = small_disk / "nats.log"
    log.write_bytes(b"banner\n")
    assert reserve_tail(log) and log.stat().st_size == 7  # reserved, not written
    _fill(small_disk)
    with open(log, "ab") as f:
        for _ in range(100):
            f.write(b"[ERR] Filestore [OBJ_BARS] Critical write error: write ...: no space left on device" * 4 + b"\n")
            f.flush()


# --------------------------------------------------------------------------------------- the messages
def test_a_full_disk_is_named_and_a_write_never_acknowledged_is_not_called_unreachable(tmp_path):
    from nats.js.errors import ServiceUnavailableError

    from ktrdr import disk

    s = Settings(home=tmp_path / "home", nats_url=None)
    ours = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "bars.csv"))
    full = disk.explain(ours, s)
    assert full is not None and full.code == "disk_full" and str(tmp_path / "out") in str(full)
    refused = ServiceUnavailableError(code=503, err_code=10023, description="insufficient resources")
    assert f"JetStream store ({tmp_path / 'home' / 'nats'}) is full" in str(disk.explain(refused, s))
    stuck = ServiceUnavailableError(code=500, err_code=10051, description="write .../1.blk: no space left on device")
    assert str(tmp_path / "home" / "nats") in str(disk.explain(stuck, s))
    assert disk.explain(TimeoutError(), s) is None  # no record of a write error: not a disk
    s.run_dir.mkdir(parents=True)
    disk.health_file(s).write_text(json.dumps({"state": "write_error", "line": "Critical write error"}) + " " * 99)
    assert "is full" in str(disk.explain(TimeoutError(), s))


async def test_a_load_whose_write_the_full_store_never_acknowledged_fails_with_disk_full(tmp_path):
    """Before: "internal error in job-manager: TimeoutError". The job-manager's write is replaced by
    what objects.put raises on a store that stopped writing (its publish never acknowledged)."""
    import nats.errors

    from actors.registry import build

    s = Settings(home=tmp_path / "home", nats_url="nats://127.0.0.1:4222")  # the embedded actors' settings
    jm = build("job-manager", s)

    async def stuck(op: object) -> dict[str, object]:
        raise nats.errors.TimeoutError

    jm._load = stuck  # type: ignore[attr-defined]
    with pytest.raises(nats.errors.TimeoutError):  # no record of a store write error: not called a disk
        await jm.handle(None)  # type: ignore[arg-type]
    s.run_dir.mkdir(parents=True)  # what the supervisor records on the server's "Critical write error"
    (s.run_dir / "store.json").write_text(json.dumps({"state": "write_error", "disk": str(s.home / "nats")}))
    with pytest.raises(Exception) as failed:
        await jm.handle(None)  # type: ignore[arg-type]
    assert getattr(failed.value, "code", None) == "disk_full", repr(failed.value)
    assert f"the disk holding {s.home / 'nats'} is full" in str(failed.value)


def test_up_on_a_full_disk_says_so_in_one_line(small_disk):
    """Before: a traceback ending in OSError: [Errno 28] No space left on device."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "IB_PORT", "KTRDR_"))}
    env.update({"KTRDR_HOME": str(small_disk / "home"), "KTRDR_NATS_PORT": str(free_port()),
                "KTRDR_WEB_PORT": str(free_port()), "KTRDR_LOCAL_ROLES": "orchestrator"})
    _fill(small_disk)
    try:
        res = run_ktrdr(env, "up")
        assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert f"the disk holding {small_disk}" in res.stderr and "is full (0 bytes free)" in res.stderr, res.stderr
    finally:
        run_ktrdr(env, "down")


# ------------------------------------------------------------------------------------- the whole stack
def _csv(path: Path, rows: int, start: str) -> Path:
    idx = pd.date_range(start, periods=rows, freq="1min", tz="UTC", name="timestamp")
    c = 100 + np.random.default_rng(rows).standard_normal(rows).cumsum() * 0.01
    pd.DataFrame({"open": c, "high": c + 0.5, "low": c - 0.5, "close": c, "volume": 10.0}, index=idx).to_csv(path)
    return path


def _orphans(env: dict[str, str]) -> dict[str, int]:
    """Chunk sets in BARS that no object points to (read with the CLI's credentials)."""
    code = ("import asyncio, json\n"
            "from ktrdr.config import settings\nfrom ktrdr.client import Client\nfrom ktrdr import embedded\n"
            "from ktrdr.transport import objects\n"
            "async def main():\n"
            "    s = settings()\n"
            "    async with Client(s, url=embedded.recorded_url(s)) as c:\n"
            "        info = await c.js.stream_info('OBJ_BARS', subjects_filter='$O.BARS.C.>')\n"
            "        live = {st.nuid for st in await objects.list_objects(c.js, 'BARS')}\n"
            "        print(json.dumps({k: v for k, v in (info.state.subjects or {}).items()\n"
            "                          if k.rsplit('.', 1)[1] not in live}))\n"
            "asyncio.run(main())\n")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.slow
def test_a_full_store_is_named_and_the_stack_writes_again_once_space_is_freed(tmp_path):
    home = tmp_path / "ktrdr"
    _mount(home, 64 * MiB)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "IB_PORT", "KTRDR_"))}
    env.update({"KTRDR_HOME": str(home), "KTRDR_NATS_PORT": str(free_port()), "KTRDR_WEB_PORT": str(free_port()),
                "KTRDR_LOCAL_ROLES": "orchestrator,job-manager,ib", "KTRDR_DISK_MIN_FREE": str(8 * MiB),
                "KTRDR_CHUNK_ORPHAN_AGE_S": "2", "KTRDR_IB_TIME_SCALE": "0.01"})
    small, big = _csv(tmp_path / "small.csv", 2000, "2020-01-01"), _csv(tmp_path / "big.csv", 30_000, "2021-01-01")
    load = None
    try:
        assert run_ktrdr(env, "data", "import", str(small), "-s", "AAPL", "-t", "1m").returncode == 0
        before = json.loads(run_ktrdr(env, "data", "range", "AAPL", "-t", "1m", "--json").stdout)
        filler = _fill(home)
        # A load submitted now cannot be stored past its command; an import of 1.5 MB of bars fails.
        load = subprocess.Popen([sys.executable, "-m", "ktrdr", "data", "load", "AAPL", "-t", "1h", "--mode",
                                 "tail"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        res = run_ktrdr(env, "data", "import", str(big), "-s", "MSFT", "-t", "1m")
        assert res.returncode == 1
        line = res.stderr.strip()
        assert "cannot reach NATS" not in line and len(line.splitlines()) == 1, line
        assert f"the disk holding {home / 'nats'} is full" in line, line
        status = run_ktrdr(env, "status").stdout
        assert "store write error" in status and str(home / "nats") in status, status
        if load.poll() is not None:  # it ran in what room was left, or gave up on an unstored command saying why
            err = load.communicate()[1].strip()
            assert load.returncode == 0 or f"the disk holding {home / 'nats'} is full" in err, err
            load = None

        filler.unlink()
        freed = time.monotonic()
        deadline = freed + 30
        while run_ktrdr(env, "data", "import", str(small), "-s", "MSFT", "-t", "1m").returncode != 0:
            assert time.monotonic() < deadline, "the stack did not write again within 30 s of space freed"
        print(f"\nwriting again {time.monotonic() - freed:.2f} s after space was freed")
        if load is not None:  # still waiting for its command to be stored or run: now it runs
            err = load.communicate(timeout=60)[1]
            assert load.returncode == 0, err
        assert "restarted" in run_ktrdr(env, "status").stdout
        # Nothing stored before was lost or changed: the read checks every byte against its digest.
        after = json.loads(run_ktrdr(env, "data", "range", "AAPL", "-t", "1m", "--json").stdout)
        assert after["digest"] == before["digest"] and after["rows"] == before["rows"] == 2000
        exported = run_ktrdr(env, "data", "export", "AAPL", "-t", "1m", "-o", str(tmp_path / "back.csv"))
        assert exported.returncode == 0, exported.stderr
        # The failed import's chunks do not stay: the job-manager purges what no object points to.
        deadline = time.monotonic() + 20
        while orphans := _orphans(env):
            assert time.monotonic() < deadline, f"orphaned chunks stayed in BARS: {orphans}"
            time.sleep(0.5)
        assert [p for p in (home / "cache").iterdir() if p.name.startswith(".part.")] == []
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.communicate()
        run_ktrdr(env, "down")
        _umount(home)
