"""Every verb of `ktrdr`, run as a new user runs it: no NATS_URL, a fresh KTRDR_HOME, the embedded
stack the first verb starts (one for the whole table, `ktrdr down` at the end). Each row checks what
a user looks at: the exit code and a key piece of output or the file written. The table must name
every verb `ktrdr --help` lists, so a new verb cannot skip it."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ktrdr.embedded import free_port, port_open
from tests.helpers import run_ktrdr

# Forty-odd verbs, each a fresh interpreter: 120 s (the suite's default) on a quiet host, over it under a
# load of 6 on 2 cores once `backtest` joined the table.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

STRATEGY = str(Path(__file__).parents[2] / "strategies" / "mlp_rsi_aapl.yaml")
SPAN = ("--start", "2024-01-02", "--end", "2024-03-01")  # two months of 1h bars: a few seconds to load


@dataclass
class Stack:
    env: dict[str, str]
    work: Path
    ran: set[str] = field(default_factory=set)  # the verbs run so far ("data load", "ops plot", ...)
    problems: list[str] = field(default_factory=list)

    def run(self, *args: str, rc: int = 0, says: str | Callable[[str], bool] = "", timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        """Run `ktrdr ARGS`, record the verb, and note (not raise) a wrong exit code or output, so
        one run lists every verb that fails."""
        self.ran.add(verb_of(args))
        res = run_ktrdr(self.env, *args, timeout=timeout)
        text = res.stdout + res.stderr
        ok = says(text) if callable(says) else says in text
        if res.returncode != rc or not ok or "Traceback" in text:
            self.problems.append(f"ktrdr {' '.join(args)}: exit {res.returncode} (want {rc}); "
                                 f"{'output lacks ' + repr(says) if isinstance(says, str) else 'output check failed'}"
                                 f": {text.strip()[-400:]!r}")
        return res


GROUPS = ("ops", "events", "data", "strategies", "models", "schedule", "auth")


def verb_of(args: tuple[str, ...] | list[str]) -> str:
    return " ".join(args[:2]) if args and args[0] in GROUPS else (args[0] if args else "")


def listed_verbs(env: dict[str, str]) -> set[str]:
    """The verbs `ktrdr --help` and each group's --help list."""

    def commands(*group: str) -> list[str]:
        text = run_ktrdr(env, *group, "--help", timeout=60).stdout
        section = text.split("Commands:", 1)[1] if "Commands:" in text else ""
        return re.findall(r"^  ([a-z][a-z-]*)\s", section, flags=re.M)

    verbs = set()
    for name in commands():
        verbs |= {f"{name} {sub}" for sub in commands(name)} if name in GROUPS else {name}
    return verbs


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("every-verb")
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "IB_PORT", "IB_HOST", "KTRDR_ROLE")}
    env.update({"KTRDR_HOME": str(work / "home"), "KTRDR_NATS_PORT": str(free_port()),
                "KTRDR_WEB_PORT": str(free_port()), "PYTHONUNBUFFERED": "1"})
    env.pop("KTRDR_LOCAL_ROLES", None)  # every actor, as on a user's machine
    yield Stack(env, work)
    run_ktrdr(env, "down", timeout=60)


def read_line(proc: subprocess.Popen[str], want: str, timeout: float) -> str:
    """The first line of proc's stdout containing `want`, within `timeout` seconds ("" if none)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break
        if want in line:
            return line
    return ""


def test_every_verb_works_on_the_embedded_default(stack: Stack) -> None:
    s, work = stack, stack.work
    listed = listed_verbs(s.env)
    assert {"up", "dummy", "train", "ops plot", "data load", "models pull", "auth init"} <= listed, listed
    # The stack and its page.
    s.run("up", says="ktrdr stack up")
    s.run("status", says=lambda text: "actors:" in text and "orchestrator" in text and "trainer" in text)
    s.run("web", says=f"http://127.0.0.1:{s.env['KTRDR_WEB_PORT']}/")
    s.run("events", "schema", says='"StartTraining"')
    # Strategies.
    s.run("strategies", "list", str(Path(STRATEGY).parent), says="mlp_rsi_aapl")
    s.run("strategies", "validate", STRATEGY, says="valid: mlp_rsi_aapl")
    # Operations: a dummy, one cancelled, a data load, a training workflow.
    s.run("dummy", "--iterations", "2", "--interval", "0.01", says="Dummy operation completed: 2 iterations")
    long_op = s.run("dummy", "--iterations", "100", "--interval", "0.2", "--no-wait").stdout.strip()
    s.run("ops", "cancel", long_op, says=f"{long_op} cancelled")
    again = s.run("ops", "retry", long_op, "--no-wait", says="dummy-").stdout.strip()
    s.run("ops", "show", long_op, says=f"retried by {again}")
    s.run("ops", "cancel", again, says=f"{again} cancelled")
    s.run("data", "load", "AAPL", "-t", "1h", "--mode", "full", *SPAN, says="Loaded AAPL 1h")
    s.run("data", "show", "AAPL", "-t", "1h", says="AAPL 1h:")
    s.run("data", "range", "AAPL", "-t", "1h", says="AAPL 1h: 2024-01-02")
    csv = work / "aapl.csv"
    s.run("data", "export", "AAPL", "-t", "1h", "-o", str(csv), says="wrote")
    s.run("data", "import", str(csv), "-s", "MSFT", "-t", "1h", says="imported")
    s.run("data", "plot", "AAPL", "-t", "1h", "-o", str(work / "aapl.png"), says="wrote")
    s.run("train", STRATEGY, *SPAN, "--epochs", "1", says="Training completed: 1 epochs")
    ops = json.loads(s.run("ops", "list", "--json").stdout or "[]")
    trainings = [v["op_id"] for v in ops if v["op_type"] == "training_workflow"]
    train_op = trainings[-1] if trainings else "training-20240101T000000000000-000000"
    s.run("ops", "list", says=train_op)
    s.run("ops", "show", train_op, says="status     completed")
    s.run("ops", "watch", train_op, says="Training completed")
    s.run("ops", "replay", train_op, says="Training completed")
    s.run("ops", "plot", train_op, "-o", str(work / "train.png"), says="wrote")
    s.run("ops", "reindex", says="reindexed")
    s.run("ops", "list", says=train_op)  # the same list from the rebuilt index
    # Models.
    s.run("models", "list", says="mlp_rsi_aapl/AAPL_1h_v1")
    s.run("models", "show", "mlp_rsi_aapl", says="mlp_rsi_aapl/AAPL_1h_v1")
    s.run("backtest", "mlp_rsi_aapl", "--commission", "0.0005", says="Backtest completed: mlp_rsi_aapl/AAPL_1h_v1")
    s.run("sweep", STRATEGY, *SPAN, "--epochs", "1", "--param", "model.training.learning_rate=[0.01, 0.001]",
          "--data", "local", says=lambda text: "Sweep completed: 2/2 variants" in text and "leaderboard (2/2" in text)
    pulled = work / "models" / "new-folder"  # not there yet: pulled into it as `git clone` would
    s.run("models", "pull", "mlp_rsi_aapl", "-o", str(pulled), says="model.pt")
    # Schedules (nats-server fires them): one every second, then paused, fired by hand, resumed, removed.
    s.run("schedule", "add", "tick", "--every", "1s", "--", "dummy", "--iterations", "1", "--interval", "0.01",
          says="schedule tick: @every 1s, overlap skip: dummy 1 x 0.01 s")
    s.run("schedule", "list", says="tick")
    s.run("schedule", "pause", "tick", says="paused")
    s.run("schedule", "trigger", "tick", says="schedule tick fired")
    s.run("schedule", "show", "tick", says=lambda text: "schedule tick: @every 1s" in text and " started " in text)
    s.run("schedule", "resume", "tick", says="resumed")
    s.run("schedule", "remove", "tick", says="removed")
    # Credentials of the stack.
    s.run("auth", "init", says="kept")
    s.run("auth", "env", "trainer", says="export KTRDR_ROLE=trainer")
    # A deployment's config: beyond loopback it needs TLS (`auth init --tls-host`), so on loopback here.
    s.run("auth", "server-config", "--listen", "127.0.0.1", "-o", str(work / "server.conf"), says="wrote")
    _tail_and_gateway(s)
    s.run("down", says="stopped:")
    assert not s.problems, "\n".join(s.problems)
    assert listed <= s.ran, f"verbs the table does not run: {sorted(listed - s.ran)}"
    assert (work / "aapl.png").stat().st_size > 0 and (work / "train.png").stat().st_size > 0
    assert (pulled / "model.pt").is_file() and csv.stat().st_size > 0


def _tail_and_gateway(s: Stack) -> None:
    """The two verbs that run in the foreground until stopped."""
    s.ran |= {"ops tail", "sim-gateway"}
    tail = subprocess.Popen([sys.executable, "-m", "ktrdr", "ops", "tail"], env=s.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Keep events coming until the tail shows one: it may subscribe after the first few.
        op = run_ktrdr(s.env, "dummy", "--iterations", "100", "--interval", "0.1", "--no-wait").stdout.strip()
        line = read_line(tail, op, timeout=20)
        if not line:
            s.problems.append(f"ktrdr ops tail: showed no event of {op!r}")
        run_ktrdr(s.env, "ops", "cancel", op)
    finally:
        tail.send_signal(signal.SIGINT)
        _, err = tail.communicate(timeout=20)
    if tail.returncode != 0:
        s.problems.append(f"ktrdr ops tail: exit {tail.returncode} after Ctrl+C: {err[-300:]!r}")
    gw = subprocess.Popen([sys.executable, "-m", "ktrdr", "sim-gateway", "--port", "0"], env=s.env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = read_line(gw, "sim-gateway listening on", timeout=30)
        port = int(line.split(":")[-1].split()[0]) if line else 0
        if not port or not port_open("127.0.0.1", port):
            s.problems.append(f"ktrdr sim-gateway: not listening ({line!r})")
    finally:
        gw.send_signal(signal.SIGINT)
        _, err = gw.communicate(timeout=20)
    if gw.returncode != 0:
        s.problems.append(f"ktrdr sim-gateway: exit {gw.returncode} after Ctrl+C: {err[-300:]!r}")
