"""The training child process (`python -m ktrdr.training._child SOCK_FD LIFELINE_FD CANCEL_FD THREADS`).

Started by ktrdr.training.process.TrainingProcess, never by hand. It sets its torch thread budget,
imports the training stack once, says READY, then runs one job after another: progress and
checkpoints go up the socket as frames while the job runs, then its outcome or its error (the frames
are ktrdr.training.frames'). A watchdog thread blocks on the lifeline pipe and ends the process when
the parent is gone.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from ktrdr import tracing
from ktrdr.training import frames


class SharedCancel:
    """The CancelFlag the training loop reads at every batch: the parent writes the sequence number of
    the job to cancel into a shared word; reading it is one memory load."""

    def __init__(self, word: mmap.mmap, seq: int) -> None:
        self._word = word
        self._seq = seq

    @property
    def is_cancelled(self) -> bool:
        return frames.cancelled_seq(self._word) == self._seq

    @property
    def reason(self) -> str:
        return "cancel requested"  # the parent re-raises with its token's own reason


def _watch_parent(lifeline_fd: int) -> None:
    """Blocks until the parent's end of the lifeline closes (it never writes), then exits at once:
    a training left running for a dead actor would hold a core and write checkpoints nobody reads."""
    while True:
        try:
            if not os.read(lifeline_fd, 1):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    os._exit(70)


class _Sender:
    """Frames up the socket from the training thread and the checkpoint thread, one at a time."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, frame: bytes) -> None:
        with self.lock:
            self.conn.send_bytes(frame)

    def progress(self, state: Any) -> None:
        self.send(frames.progress_frame(state))

    def checkpoint(self, epoch: int, data: bytes) -> None:
        self.send(frames.checkpoint_frame(epoch, data))


def _warm_up() -> None:
    """Pay torch's one-off costs now, before READY, not in the first training: the first optimizer
    imports torch._dynamo (~2.4 s here), the first save/load and backward initialise their machinery."""
    import io

    import torch

    from ktrdr.training import checkpoint
    from ktrdr.training.model import build_mlp, make_optimizer
    from ktrdr.training.strategy import Architecture

    model = build_mlp(4, Architecture(hidden_layers=[8]))
    for name in ("adam", "sgd", "rmsprop"):
        optimizer = make_optimizer(name, model.parameters(), 1e-3)
        loss = torch.nn.functional.cross_entropy(model(torch.zeros(2, 4)), torch.zeros(2, dtype=torch.long))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    checkpoint.decode(checkpoint.encode({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                         "rng": checkpoint.rng_state()}))
    torch.save(model.state_dict(), io.BytesIO())


def main(argv: list[str]) -> int:
    sock_fd, lifeline_fd, cancel_fd, threads = (int(a) for a in argv[:4])
    # The parent decides when this process ends (cancel flag, close, lifeline); a Ctrl+C meant for the
    # foreground CLI must not kill a training mid-epoch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(lifeline_fd,), name="lifeline", daemon=True).start()
    began = time.monotonic()
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    from ktrdr.training.trainer import run_training

    _warm_up()
    conn = Connection(sock_fd)
    word = mmap.mmap(cancel_fd, frames.CANCEL_WORD_SIZE)
    sender = _Sender(conn)
    traced = tracing.setup("training-child")  # with its parent's OTEL_* environment (and KTRDR_TRACES_DIR)
    sender.send(frames.ready_frame(os.getpid(), threads, time.monotonic() - began))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            tracing.flush()
            return 0
        if not isinstance(msg, frames.JobMessage):
            tracing.flush()  # os._exit skips the SDK's exit hook: an OTLP batch still queued goes now
            return 0  # ExitMessage; _exit below: nothing to clean up, torch's teardown costs ~0.7 s
        try:
            job = msg.training_job()
            with tracing.span("training", job.op_id, parent=msg.trace) if traced else contextlib.nullcontext():
                outcome = run_training(job, msg.bars, emit=sender.progress,
                                       cancel=SharedCancel(word, msg.seq), resume=msg.resume,
                                       on_checkpoint=sender.checkpoint)
        except Exception as exc:  # every failure goes up as an ERROR frame; the child serves on
            if not hasattr(exc, "code"):
                traceback.print_exc(file=sys.stderr)
            sender.send(frames.error_frame(exc))
            continue
        finally:
            del msg  # a long-lived child must not keep the last job's bars and checkpoint alive
        sender.send(frames.done_frame(outcome))


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
