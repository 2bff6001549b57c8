"""TrainingProcess: runs `run_training` in a child process with its own thread budget.

Why a process: in the trainer actor's process torch's OpenMP threads competed with the actor's event
loop, its NATS connection and nats-server for the same cores (end to end 0.81-0.91 of a bare loop on
2 cores). The child gets `training_threads()` torch threads (cores - 1, at least 1, at most 8) and the
parent keeps a core for the event loop, cancels and heartbeats; the parent never imports torch.

How it talks (all of it set up explicitly, nothing inherited by accident):
- the child is `python -m ktrdr.training._child`, started with fork+exec (subprocess), which is as
  safe after threads and an open NATS connection as multiprocessing's 'spawn', without re-importing
  the actor's main module; it imports torch once, says ready, and then serves one job after another,
  so its start-up cost (measured: `startup_s`) is paid when the actor starts, not per training;
- a socket pair carries the job and bars down (one pickle, the child trusts its parent) and frames
  up: progress, checkpoints, the outcome or the error (ktrdr.training.frames defines them all; the
  error frame carries the child's error code, and a cancel's where, reason and reason_code);
- cancel is one shared-memory word (memfd + mmap) holding the sequence number of the job to cancel,
  read by the training loop at every batch: a cancel lands within one batch, with no thread wake-up
  or GIL hand-off in the child;
- a lifeline pipe whose write end only the parent holds: when the parent dies (even kill -9) the
  kernel closes it, the child's watchdog thread reads EOF and the child exits. No orphans.
`run()` is blocking (the actor calls it from a worker thread) and raises what an in-process run
raises: OperationCancelledError(where), DataError, ValidationError/StrategyError, or a KtrdrError
saying how the child died ("training process died with signal 9").
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from events.messages import ProgressState
from ktrdr import tracing
from ktrdr.cancellation import CancellationToken
from ktrdr.errors import KtrdrError, OperationCancelledError
from ktrdr.training import frames
from ktrdr.training.job import TrainingJob, TrainingOutcome

log = logging.getLogger(__name__)

Emit = Callable[[ProgressState], None]
OnCheckpoint = Callable[[int, bytes], None]


def training_threads(cores: int | None = None) -> int:
    """torch threads for the child: one core left to the actor, NATS and nats-server; at most 8
    (the MLPs trained here stop gaining well before that). 1 on this 2-core machine, where one torch
    thread also beat two for the bare loop itself (small batches: OpenMP hand-offs cost more than
    they save)."""
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
    return max(1, min(cores - 1, 8))


def _shared_word() -> tuple[int, mmap.mmap]:
    """An 8-byte shared-memory word (fd, mapping): memfd on Linux, an unlinked temp file elsewhere."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("ktrdr-training-cancel", os.MFD_CLOEXEC)
    else:  # pragma: no cover - non-Linux
        fd, path = tempfile.mkstemp(prefix="ktrdr-cancel-")
        os.unlink(path)
    os.ftruncate(fd, frames.CANCEL_WORD_SIZE)
    return fd, mmap.mmap(fd, frames.CANCEL_WORD_SIZE)


_WAIT_SLICE_S = 0.1  # how often a wait for the child's start (or for another start holding it) checks its cancel


class TrainingProcess:
    """One training child, reused job after job; restarted on the next run if it died."""

    def __init__(self, *, threads: int | None = None, startup_timeout_s: float = 120.0,
                 cancel_grace_s: float = 30.0, python: str | None = None) -> None:
        self.threads = threads if threads is not None else training_threads()
        self.startup_timeout_s = startup_timeout_s
        self.cancel_grace_s = cancel_grace_s  # a child that ignores a cancel this long is killed
        self.python = python or sys.executable
        self.startup_s: float | None = None  # spawn -> ready of the current child, seconds
        # child send -> parent receive of the latest progress frames (bounded: the child is long-lived)
        self.pipe_latency_ms: deque[float] = deque(maxlen=100_000)
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._lifeline_w: int | None = None
        self._cancel_fd, self._cancel_word = _shared_word()
        self._seq = 0
        self._closed = False
        self._lock = threading.RLock()  # one run (or start) at a time

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self, cancel: CancellationToken | None = None) -> None:
        """Start the child and wait until it has imported torch (idempotent while it lives). A cancel
        of `cancel` meanwhile kills the half-started child and raises OperationCancelledError."""
        with self._lock:
            if self._closed:
                raise KtrdrError("the training process has been closed")
            if self._proc is None or self._proc.poll() is not None:
                self._start(cancel)

    def _start(self, cancel: CancellationToken | None = None) -> None:
        self._reset()
        began = time.monotonic()
        parent_sock, child_sock = socket.socketpair()
        life_r, life_w = os.pipe()
        root = str(Path(__file__).resolve().parents[2])  # the folder holding the ktrdr package
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
               "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        if tracing.STATE.directory is not None:  # its spans beside ours (it inherits the OTEL_* variables)
            env[tracing.ENV_DIR] = str(tracing.STATE.directory)
        fds = (child_sock.fileno(), life_r, self._cancel_fd)
        try:
            self._proc = subprocess.Popen(
                [self.python, "-m", "ktrdr.training._child", *map(str, fds), str(self.threads)],
                pass_fds=fds, env=env, stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            child_sock.close()  # the child has its copies; ours would hide its death (no EOF)
            os.close(life_r)
        self._lifeline_w = life_w
        self._conn = Connection(parent_sock.detach())
        deadline = began + self.startup_timeout_s
        try:
            while not self._conn.poll(_WAIT_SLICE_S):
                if cancel is not None and cancel.is_cancelled:
                    self._kill()
                    cancel.raise_if_cancelled("starting the training process")
                if time.monotonic() > deadline:
                    self._kill()
                    raise KtrdrError(f"the training process did not start within {self.startup_timeout_s:.0f} s")
            frame = self._recv()
        except (EOFError, OSError) as exc:  # it died while importing (or close() killed it)
            raise self._died() from exc
        if frame[:1] != frames.READY:
            self._kill()
            raise KtrdrError("the training process sent an unexpected first message")
        self.startup_s = time.monotonic() - began

    def close(self, timeout: float = 5.0) -> None:
        """Ask the child to exit; kill it if it does not within `timeout`. A start or run in progress on
        another thread is cut short (its child is killed; the run raises). Final: no restart after."""
        self._closed = True
        if not self._lock.acquire(blocking=False):
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.kill()
            self._lock.acquire()
        try:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(OSError, ValueError):
                    assert self._conn is not None
                    self._conn.send(frames.ExitMessage())
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self._reset()
        finally:
            self._lock.release()

    def __del__(self) -> None:  # best effort; close() is the API
        with contextlib.suppress(Exception):
            self.close(timeout=1.0)

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._reset()

    def _reset(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lifeline_w is not None:
            os.close(self._lifeline_w)
            self._lifeline_w = None
        self._proc = None

    def _recv(self) -> bytes:
        assert self._conn is not None
        return self._conn.recv_bytes()

    def _died(self) -> KtrdrError:
        proc = self._proc
        code = proc.wait() if proc is not None else None
        self._reset()
        if code is not None and code < 0:
            return KtrdrError(f"training process died with signal {-code}",
                              hint="the operation can be retried; its last epoch checkpoint is kept")
        return KtrdrError(f"training process exited unexpectedly (exit code {code})",
                          hint="the operation can be retried; its last epoch checkpoint is kept")

    # -- one run -----------------------------------------------------------------------------------
    def run(self, job: TrainingJob, bars: dict[str, dict[str, Any]], *, emit: Emit, cancel: CancellationToken,
            resume: bytes | None = None, on_checkpoint: OnCheckpoint | None = None) -> TrainingOutcome:
        """Run `job` in the child; blocks until it ends. Progress and checkpoints are delivered on the
        calling thread, in the order the child produced them."""
        # The lock is held by a start in progress, the actor's warm-up among them (torch's import: ~2 s
        # on a quiet host, 70 s measured under a load of 10-14 on 2 cores): a cancel meanwhile must not
        # wait for it (a sweep's cancelled variant stayed `running` 70 s). Waited for in slices.
        while not self._lock.acquire(timeout=_WAIT_SLICE_S):
            cancel.raise_if_cancelled("waiting for the training process to start")
        try:
            cancel.raise_if_cancelled("starting the training process")
            self.start(cancel)
            self._seq += 1
            seq = self._seq
            unregister = cancel.on_cancel(lambda: self._request_cancel(seq))
            settled = False  # the child has answered this job (done or error): it is free again
            try:
                try:
                    assert self._conn is not None
                    self._conn.send(frames.JobMessage.of(seq, job, bars, resume, tracing.traceparent()))
                except (OSError, ValueError) as exc:
                    raise self._died() from exc
                outcome, error = self._follow(emit, cancel, on_checkpoint)
                settled = True
                if error is not None:
                    raise error
                assert outcome is not None
                return outcome
            finally:
                unregister()
                if not settled and self._proc is not None:
                    # We stop listening mid-job (emit or on_checkpoint raised, or we are being torn
                    # down): its later frames would be read as the next job's. Start afresh.
                    self._kill()
        finally:
            self._lock.release()

    def _request_cancel(self, seq: int) -> None:
        self._cancel_word[0 : frames.CANCEL_WORD_SIZE] = frames.cancel_word_value(seq)

    def _follow(self, emit: Emit, cancel: CancellationToken, on_checkpoint: OnCheckpoint | None
                ) -> tuple[TrainingOutcome | None, KtrdrError | None]:
        """Deliver frames until the job's answer: (outcome, None) or (None, the error to raise)."""
        cancelled_at: float | None = None
        while True:
            assert self._conn is not None
            try:
                ready = self._conn.poll(1.0)
            except (OSError, ValueError) as exc:
                raise self._died() from exc
            if not ready:
                if cancel.is_cancelled:
                    cancelled_at = cancelled_at or time.monotonic()
                    if time.monotonic() - cancelled_at > self.cancel_grace_s:
                        self._kill()  # stuck where it does not check the flag: stop it the hard way
                        raise OperationCancelledError("training process stopped", cancel.reason)
                continue
            try:
                frame = self._recv()
            except (EOFError, OSError) as exc:
                raise self._died() from exc
            tag, body = frames.split(frame)
            if tag == frames.PROGRESS:
                sent, state = frames.read_progress(body)
                self.pipe_latency_ms.append((time.time() - sent) * 1000)
                emit(state)
            elif tag == frames.CHECKPOINT:
                if on_checkpoint is not None:
                    on_checkpoint(*frames.read_checkpoint(body))
            elif tag == frames.DONE:
                return frames.read_outcome(body), None
            elif tag == frames.ERROR:
                return None, frames.error_from(frames.read_error(body), cancel)
            else:
                self._kill()
                raise KtrdrError(f"the training process sent an unknown frame {bytes(tag)!r}")

