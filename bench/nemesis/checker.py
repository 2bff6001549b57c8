"""The nemesis's checker, in the spirit of Jepsen's: pure functions over what the load generator
recorded while a fault ran (`History`) and what the streams held once the fault was healed
(`Stored`), returning the violations found and the shared result row. No NATS here: the tests in
tests/faults/test_checker.py feed it hand-made histories, one per rule, each able to fail.

Rules (each violation a short text naming the operation):
- lost: an acknowledged publish of the load generator (a command, a cancel) that the stream does not
  hold afterwards (a command counts as held when its operation was created or rejected), and an
  event a live core subscriber on `ops.>` saw that OPS does not hold (a core subscriber sees what a
  server accepted, so this over-counts rather than misses: a publish the server saw but never acked
  is retried by its actor under the same msg id and stored then, or shows up here);
- duplicated: one (subject, actor, seq) stored more than once (the msg-id dedupe failed);
- terminal: every operation whose command was acknowledged has exactly one terminal event that
  counts (the first the fold applies). A later stored one with another status does not count, but
  says some actor decided on a view it had not refreshed (an orchestrator failing an operation its
  worker had completed): `second_verdicts`, reported apart from the violations;
- leases: no attempt granted twice (two `started` of one attempt naming different workers) and
  attempts granted in increasing order: no two workers held one operation's lease at once;
- fencing: no held event (progress, verdict) of a worker other than the latest grant's holder
  changed the view (the fold, run event by event, is the judge: it must have ignored it);
- epochs: no orchestrator event of a leader epoch older than one already stored for the operation
  changed the view (an OrchestratorFailed of epoch k after a grant of epoch k+1, from a leader that
  was paused or cut off while a standby took over, must not be the verdict that counts); the epochs
  the operation's orchestrator events carried are named in its second-verdict line;
- after heal: a normal operation submitted after healing completed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from events.messages import AnyEvent, OperationStarted
from ktrdr.ops.fold import fold
from ktrdr.ops.view import OperationView, is_orchestrator

Key = tuple[str, str, int]  # (subject, actor, seq): one event as its publisher numbered it


@dataclass(frozen=True)
class Acked:
    """One publish of the load generator that the server acknowledged."""

    kind: str  # "command" or "cancel"
    op_id: str
    subject: str
    stream: str
    seq: int


@dataclass
class History:
    """What the load generator recorded during a fault."""

    acked: list[Acked] = field(default_factory=list)
    unacked: int = 0  # publishes that were never acknowledged (not counted as acked: the client knows)
    seen: set[Key] = field(default_factory=set)  # events of the load's operations seen live on ops.>
    after_heal_status: str = ""  # the normal operation submitted after healing: its final status
    recover_s: float = -1.0  # from heal to that operation's completion (-1: it did not complete)


@dataclass
class Stored:
    """What the streams held afterwards."""

    # op_id -> the events that count, in the order the fold takes them (ktrdr.ops.reader.read_proven)
    proven: dict[str, list[AnyEvent]] = field(default_factory=dict)
    raw: list[Key] = field(default_factory=list)  # every stored OPS message of the load's operations
    cancels_held: set[tuple[str, int]] = field(default_factory=set)  # (stream, seq) of acked cancels found


SECOND_VERDICT = "a second, different verdict stored"


def lost(history: History, stored: Stored) -> list[str]:
    out = []
    created = {op for op, evs in stored.proven.items()
               if any(type(e).__name__ in ("OperationCreated", "OperationRejected") for e in evs)}
    for a in history.acked:
        if a.kind == "command" and a.op_id not in created:
            out.append(f"{a.op_id}: its acknowledged command ({a.stream} seq {a.seq}) never became an operation")
        elif a.kind == "cancel" and (a.stream, a.seq) not in stored.cancels_held:
            out.append(f"{a.op_id}: its acknowledged cancel ({a.stream} seq {a.seq}) is not stored")
    held = set(stored.raw)
    out += [f"{k[0]}: seen live from {k[1]} (seq {k[2]}), not in OPS" for k in sorted(history.seen - held)
            if not superseded(k, held)]
    return out


def superseded(key: Key, held: set[Key]) -> bool:
    """A lifecycle event seen live but not stored, while its actor's event on the same subject is
    stored under another seq: a publish never acknowledged that the actor redid (the orchestrator
    redoes a command whose handling failed: a new seq, or the same event deduplicated by its msg id
    against the first one stored). An orchestrator's event is also redone by the other orchestrator:
    a leader cut off with its node publishes `created` to a server that can no longer store it (its
    core subscribers still see it), is never acked, loses its lease, and the standby that takes over
    handles the same command and stores its own `created` on that subject. Progress is resent under
    its own seq, so it is never excused; lifecycle events are compared by (subject, actor) only, or
    (subject, any orchestrator) for the leader's, a weaker check than progress gets."""
    subject, actor, seq = key
    if subject.endswith(".progress"):
        return False
    if is_orchestrator(actor):
        return any(s == subject and is_orchestrator(a) and (a, q) != (actor, seq) for s, a, q in held)
    return any(s == subject and a == actor and q != seq for s, a, q in held)


def superseded_count(history: History, stored: Stored) -> int:
    held = set(stored.raw)
    return sum(1 for k in history.seen - held if superseded(k, held))


def duplicated(stored: Stored) -> list[str]:
    return [f"{k[0]}: stored {n} times (from {k[1]}, seq {k[2]})"
            for k, n in sorted(Counter(stored.raw).items()) if n > 1 and k[2]]


# Terminal event types by the status they give (the worker's and the orchestrator's kinds alike).
_VERDICT = {"OperationCompleted": "completed", "OrchestratorCompleted": "completed", "OperationFailed": "failed",
            "OrchestratorFailed": "failed", "OperationCancelled": "cancelled", "OrchestratorCancelled": "cancelled",
            "OperationRejected": "rejected"}


def _snapshot(view: OperationView) -> tuple[Any, ...]:
    return (view.status, view.percentage, view.message, view.attempts, view.worker, view.result, view.error)


def judge_operation(op_id: str, events: list[AnyEvent]) -> list[str]:
    """The terminal, lease and fencing rules for one operation's counted events."""
    out: list[str] = []
    view = OperationView(op_id=op_id)
    grants: dict[int, str] = {}
    last_attempt = 0
    terminals: list[tuple[str, str]] = []  # (status, actor) of each terminal event, counted or not
    newest_epoch = 0  # the newest leader epoch an orchestrator event of this operation carried so far
    for ev in events:
        if isinstance(ev, OperationStarted):
            worker = ev.worker or ev.actor
            if ev.attempt in grants and grants[ev.attempt] != worker:
                out.append(f"{op_id}: attempt {ev.attempt} granted to {grants[ev.attempt]} and to {worker}")
            elif ev.attempt < last_attempt:
                out.append(f"{op_id}: attempt {ev.attempt} granted after attempt {last_attempt}")
            grants.setdefault(ev.attempt, worker)
            last_attempt = max(last_attempt, ev.attempt)
        holder = view.worker
        before = _snapshot(view)
        was_terminal = view.terminal
        fold(view, ev)
        if type(ev).terminal:  # type: ignore[attr-defined]
            name = _VERDICT.get(type(ev).__name__, type(ev).__name__)
            terminals.append((name, ev.actor + (f" epoch {ev.epoch}" if hasattr(ev, "epoch") else "")))
        changed = _snapshot(view) != before
        if changed and not isinstance(ev, OperationStarted) and holder is not None and ev.actor != holder \
                and not is_orchestrator(ev.actor) and type(ev).__name__ != "OperationCreated":
            out.append(f"{op_id}: {type(ev).__name__} from {ev.actor}, which did not hold the lease "
                       f"({holder} did), changed the view")
        if was_terminal and changed:
            out.append(f"{op_id}: {type(ev).__name__} from {ev.actor} changed a terminal view")
        epoch = getattr(ev, "epoch", None) if is_orchestrator(ev.actor) else None
        if isinstance(epoch, int):
            if changed and epoch < newest_epoch:
                out.append(f"{op_id}: {type(ev).__name__} of leader epoch {epoch}, stored after one of epoch "
                           f"{newest_epoch}, changed the view{' (its verdict counted)' if view.terminal else ''}")
            newest_epoch = max(newest_epoch, epoch)
    if not view.terminal:
        out.append(f"{op_id}: no terminal event (status {view.status})")
    statuses = {s for s, _ in terminals}
    if len(statuses) > 1:
        out.append(f"{op_id}: {SECOND_VERDICT}, in stream order: {terminals}")
    return out


def check(history: History, stored: Stored) -> dict[str, list[str]]:
    """Every rule's violations (an empty list: the rule held)."""
    ops = sorted({a.op_id for a in history.acked if a.kind == "command"})
    judged = [v for op in ops for v in judge_operation(op, stored.proven.get(op, []))]
    second = [v for v in judged if SECOND_VERDICT in v]
    after = [] if history.after_heal_status == "completed" else \
        [f"the operation submitted after healing ended {history.after_heal_status or 'without a verdict'}"]
    return {"lost": lost(history, stored), "duplicated": duplicated(stored),
            "operations": [v for v in judged if SECOND_VERDICT not in v], "second_verdicts": second,
            "after_heal": after}


def row(fault: str, history: History, found: dict[str, list[str]], *, sync_interval: str = "default",
        notes: str = "") -> dict[str, object]:
    """The shared result row of one (fault class, setting), from check()'s findings."""
    problems = [v for rule in ("lost", "duplicated", "operations", "after_heal", "second_verdicts")
                for v in found.get(rule, [])]
    shown = [notes, *problems[:3], f"(+{len(problems) - 3} more)" if len(problems) > 3 else ""]
    return {
        "fault": fault, "sync_interval": sync_interval,
        "operations": len({a.op_id for a in history.acked if a.kind == "command"}),
        "acked": len(history.acked) + len(history.seen), "lost": len(found["lost"]),
        "duplicated": len(found["duplicated"]), "recover_s": round(history.recover_s, 2),
        "notes": "; ".join(x for x in shown if x) or "ok",
    }
