"""Every role against every subject and bucket: a table of probes (publishes on stream, KV, Object
Store, JetStream API and inbox subjects; subscriptions) with the roles the design lets through.
Each probe is followed by a publish to a sentinel subject nobody may use: the server answers
commands in order, so once the sentinel's permission error is in, the probe's own error is in too
if there was one. No sleeps, one connection per role, a few hundred probes in about a second."""

from __future__ import annotations

from typing import Any

import pytest

from ktrdr.auth import ROLES

pytestmark = pytest.mark.timeout(60)

ALL = frozenset(ROLES)
NONE: frozenset[str] = frozenset()
READERS = frozenset({"cli", "observer", "orchestrator", "job-manager", "trainer", "dummy", "backtester"})
WORKERS = frozenset({"job-manager", "trainer", "dummy", "backtester"})
SYSTEM_READERS = frozenset({"orchestrator", *WORKERS})  # named consumers on OPS, gets on CANCELS
T, D, Y, B = "training-x", "data-x", "dummy-x", "backtest-x"


def roles(*names: str) -> frozenset[str]:
    assert set(names) <= ALL
    return frozenset(names)


# (kind, subject, queue, roles allowed, probe even where allowed)
PROBES: list[tuple[str, str, str, frozenset[str], bool]] = [
    # commands: only the CLI submits
    *[("pub", f"cmd.{s}", "", roles("cli"), True) for s in ("training.start", "data.load", "dummy.run",
                                                                   "backtest.run")],
    # work: only the orchestrator writes work items
    *[("pub", f"work.{d}.{p}", "", roles("orchestrator"), True) for d in ("training", "data", "dummy", "backtest")
      for p in ("any", "gpu", "probe")],
    # events: each worker only its own domain; cancels: the CLI, the orchestrator, the domain's worker
    ("pub", f"ops.training.{T}.completed", "", roles("orchestrator", "trainer"), True),
    ("pub", f"ops.training.{T}.progress", "", roles("orchestrator", "trainer"), True),
    ("pub", f"ops.data.{D}.completed", "", roles("orchestrator", "job-manager"), True),
    ("pub", f"ops.data.{D}.progress", "", roles("orchestrator", "job-manager"), True),
    ("pub", f"ops.dummy.{Y}.completed", "", roles("orchestrator", "dummy"), True),
    ("pub", f"ops.backtest.{B}.completed", "", roles("orchestrator", "backtester"), True),
    ("pub", f"ops.backtest.{B}.progress", "", roles("orchestrator", "backtester"), True),
    ("pub", f"ops.backtest.{B}.cancel", "", roles("cli", "orchestrator"), True),
    ("pub", f"ops.training.{T}.cancel", "", roles("cli", "orchestrator"), True),
    ("pub", f"ops.data.{D}.cancel", "", roles("cli", "orchestrator"), True),
    ("pub", f"ops.dummy.{Y}.cancel", "", roles("cli", "orchestrator"), True),
    # what grants or creates, and the orchestrator's own verdicts: the orchestrator alone (issue 18, F4)
    *[("pub", f"ops.{d}.{o}.{n}", "", roles("orchestrator"), True) for d, o in (("training", T), ("data", D),
                                                                              ("dummy", Y), ("backtest", B))
      for n in ("created", "started", "rejected", "cancel_requested", "orch_completed", "orch_failed",
                "orch_cancelled", "orch_progress", "orch_error")],
    # lease requests: each worker its own domain's, answered by the orchestrator
    ("pub", "lease.training.claim", "", roles("trainer"), True),
    ("pub", "lease.data.renew", "", roles("job-manager"), True),
    ("pub", "lease.dummy.release", "", roles("dummy"), True),
    ("pub", "lease.backtest.claim", "", roles("backtester"), True),
    # IB requests: the job-manager only
    ("pub", "ib.bars", "", roles("job-manager"), True),
    ("pub", "ib.contract", "", roles("job-manager"), True),
    # inboxes: nobody publishes on an inbox (the ib actor only answers requests it received)
    *[("pub", f"_INBOX_{r}.abc.def", "", NONE, True) for r in ROLES],
    ("pub", "_INBOX.abc", "", NONE, True),
    # KV: own presence key; leases for the orchestrator and workers; pacing for ib
    *[("pub", f"$KV.ACTORS.{r}.{r}-1", "", roles(r), True) for r in ROLES if r not in ("cli", "observer")],
    ("pub", "$KV.ACTORS.cli.c-1", "", NONE, True),
    ("pub", "$KV.ACTORS.observer.o-1", "", NONE, True),
    ("pub", f"$KV.LEASES.{T}", "", roles("orchestrator"), True),  # the orchestrator alone grants (F2)
    ("pub", "$KV.PACING.ib-pool", "", roles("ib"), True),
    # Object Store writes
    ("pub", "$O.BARS.C.x", "", roles("job-manager", "cli"), True),
    ("pub", "$O.BARS.M.x", "", roles("job-manager", "cli"), True),
    # the backtester stores its equity curve beside the model; it writes no bars and no checkpoints
    ("pub", "$O.MODELS.C.x", "", roles("trainer", "backtester"), True),
    ("pub", "$O.MODELS.M.x", "", roles("trainer", "backtester"), True),
    ("pub", "$O.CHECKPOINTS.C.x", "", roles("trainer", "orchestrator"), True),
    # nobody purges an object bucket: one purge would empty it (issue 18, F5); writers retire chunks
    # with a rollup on the chunk subject instead
    *[("pub", f"$JS.API.STREAM.PURGE.OBJ_{b}", "", NONE, True) for b in ("BARS", "MODELS", "CHECKPOINTS")],
    # nobody deletes or purges a stream, deletes messages, or steps leaders down
    *[("pub", f"$JS.API.STREAM.{verb}.{s}", "", NONE, True) for verb in ("DELETE", "PURGE")
      for s in ("CMD", "WORK", "OPS", "OPS_CANCELS", "KV_ACTORS", "KV_LEASES", "KV_PACING")],
    *[("pub", f"$JS.API.STREAM.DELETE.OBJ_{b}", "", NONE, True) for b in ("BARS", "MODELS", "CHECKPOINTS")],
    ("pub", "$JS.API.STREAM.MSG.DELETE.OPS", "", NONE, True),
    ("pub", "$JS.API.STREAM.LEADER.STEPDOWN.OPS", "", NONE, True),
    ("pub", "$JS.API.META.LEADER.STEPDOWN", "", NONE, True),
    ("pub", "$JS.API.SERVER.REMOVE", "", NONE, True),
    ("pub", "$JS.API.STREAM.SNAPSHOT.OPS", "", NONE, True),
    ("pub", "$JS.API.STREAM.RESTORE.OPS", "", NONE, True),
    ("pub", "$SYS.REQ.SERVER.PING", "", NONE, True),
    # stream provisioning: the orchestrator only
    ("pub", "$JS.API.STREAM.CREATE.EVIL", "", NONE, True),
    ("pub", "$JS.API.STREAM.CREATE.OPS", "", roles("orchestrator"), True),
    ("pub", "$JS.API.STREAM.UPDATE.OPS", "", roles("orchestrator"), True),
    ("pub", "$JS.API.STREAM.CREATE.OPS_CANCELS", "", roles("orchestrator"), True),
    ("pub", "$JS.API.STREAM.INFO.OPS_CANCELS", "", ALL, True),
    ("pub", "$JS.API.STREAM.UPDATE.KV_ACTORS", "", roles("orchestrator"), True),
    ("pub", "$JS.API.STREAM.INFO.OPS", "", ALL, True),
    ("pub", "$JS.API.STREAM.INFO.KV_PACING", "", roles("orchestrator", "ib"), True),
    # consumers: the CMD durable is the orchestrator's; WORK durables are their domain's
    ("pub", "$JS.API.CONSUMER.CREATE.CMD", "", NONE, True),
    ("pub", "$JS.API.CONSUMER.CREATE.WORK", "", NONE, True),
    ("pub", "$JS.API.CONSUMER.DELETE.CMD.orchestrator", "", NONE, True),
    ("pub", "$JS.API.CONSUMER.DELETE.WORK.work-training-any", "", NONE, True),
    ("pub", "$JS.API.CONSUMER.MSG.NEXT.CMD.orchestrator", "", roles("orchestrator"), False),
    ("pub", "$JS.ACK.CMD.orchestrator.1.1.1.1.1", "", roles("orchestrator"), True),
    *[("pub", f"$JS.API.CONSUMER.DURABLE.CREATE.WORK.work-{d}-probe", "", NONE, True)
      for d in ("training", "data", "dummy", "backtest")],
    *[("pub", f"$JS.API.CONSUMER.CREATE.WORK.work-{d}-probe.work.{d}.probe", "", roles(r), True)
      for d, r in (("training", "trainer"), ("data", "job-manager"), ("dummy", "dummy"),
                   ("backtest", "backtester"))],
    *[("pub", f"$JS.API.CONSUMER.MSG.NEXT.WORK.work-{d}-probe", "", roles(r), True)
      for d, r in (("training", "trainer"), ("data", "job-manager"), ("dummy", "dummy"),
                   ("backtest", "backtester"))],
    *[("pub", f"$JS.ACK.WORK.work-{d}-probe.1.1.1.1.1", "", roles(r), True)
      for d, r in (("training", "trainer"), ("data", "job-manager"), ("dummy", "dummy"),
                   ("backtest", "backtester"))],
    # a domain's consumer name with another domain's filter is not in any grant
    ("pub", "$JS.API.CONSUMER.CREATE.WORK.work-data-any.work.training.any", "", NONE, True),
    ("pub", "$JS.API.CONSUMER.CREATE.WORK.work-training-any.work.>", "", NONE, True),
    ("pub", "$JS.API.CONSUMER.CREATE.WORK.work-backtest-any.work.training.any", "", NONE, True),
    # reading OPS and the buckets: reader keys (cli, observer) make only unnamed consumers (the
    # server refuses a durable on that subject); a cancel is read by a direct get on CANCELS
    ("pub", "$JS.API.CONSUMER.CREATE.OPS", "", READERS, True),
    ("pub", "$JS.API.CONSUMER.CREATE.OPS.evil", "", SYSTEM_READERS, True),
    ("pub", "$JS.API.CONSUMER.CREATE.OPS.evil.ops.>", "", SYSTEM_READERS, True),
    ("pub", "$JS.API.CONSUMER.DURABLE.CREATE.OPS.evil", "", NONE, True),
    ("pub", "$JS.API.CONSUMER.CREATE.OPS_CANCELS", "", NONE, True),
    ("pub", f"$JS.API.DIRECT.GET.OPS.ops.training.{T}.progress", "", READERS, True),
    ("pub", f"$JS.API.DIRECT.GET.OPS_CANCELS.ops.training.{T}.cancel", "", SYSTEM_READERS, True),
    ("pub", "$JS.FC.OPS.consumer.1", "", READERS, True),
    ("pub", "$JS.API.CONSUMER.CREATE.KV_ACTORS", "", roles("cli", "observer", "orchestrator"), True),
    ("pub", "$JS.API.CONSUMER.CREATE.KV_ACTORS.evil.$KV.ACTORS.>", "", roles("orchestrator"), True),
    ("pub", "$JS.API.CONSUMER.CREATE.KV_LEASES", "", roles("orchestrator"), True),
    # one writer per series: loads and `ktrdr data import` take `series.<SYMBOL>.<TF>` in SERIES
    ("pub", "$KV.SERIES.series.AAPL.1h", "", roles("job-manager", "cli"), True),
    ("pub", "$KV.LEASES.series.AAPL.1h", "", NONE, True),
    ("pub", "$JS.API.DIRECT.GET.KV_PACING.$KV.PACING.x", "", roles("ib"), True),
    ("pub", "$JS.API.CONSUMER.CREATE.OBJ_BARS", "", roles("job-manager", "trainer", "backtester", "cli"), True),
    ("pub", "$JS.API.CONSUMER.CREATE.OBJ_MODELS", "", roles("trainer", "backtester", "cli"), True),
    ("pub", "$JS.API.CONSUMER.CREATE.OBJ_CHECKPOINTS", "", roles("trainer", "orchestrator"), True),
    ("pub", "$JS.API.STREAM.MSG.GET.OBJ_MODELS", "", roles("trainer", "backtester", "cli"), True),
    # subscriptions
    ("sub", "ops.>", "", roles("cli", "observer", "orchestrator"), True),
    ("sub", "ops.training.>", "", roles("cli", "observer", "orchestrator"), True),
    ("sub", "ops.*.*.cancel", "", ALL, True),
    ("sub", "cmd.>", "", NONE, True),
    ("sub", "work.>", "", NONE, True),
    ("sub", "work.training.any", "", NONE, True),
    ("sub", "ib.>", "", NONE, True),
    ("sub", "ib.>", "ib", roles("ib"), True),
    ("sub", "ib.bars", "other", NONE, True),
    ("sub", "$KV.ACTORS.>", "", roles("orchestrator"), True),
    ("sub", "$KV.LEASES.>", "", NONE, True),
    ("sub", "$KV.PACING.>", "", NONE, True),
    ("sub", "$O.BARS.C.>", "", NONE, True),
    ("sub", "$O.MODELS.M.>", "", NONE, True),
    ("sub", "$JS.ACK.>", "", NONE, True),
    ("sub", "$JS.API.>", "", NONE, True),
    ("sub", "_INBOX.>", "", NONE, True),
    ("sub", ">", "", NONE, True),
    *[("sub", f"_INBOX_{r}.>", "", roles(r), True) for r in ROLES],
    # discovery (NATS services): the reader logins ask, every actor answers its own service only
    *[("pub", f"$SRV.{v}{tail}", "", roles("cli", "observer"), True) for v in ("PING", "INFO", "STATS")
      for tail in ("", ".ktrdr-orchestrator", ".ktrdr-dummy.dummy-h-1-abcd")],
    *[("sub", f"$SRV.{v}", "", ALL - roles("cli", "observer"), True) for v in ("PING", "INFO", "STATS")],
    *[("sub", f"$SRV.{v}.ktrdr-{r}", "", roles(r), True) for v in ("PING", "STATS") for r in ROLES
      if r not in ("cli", "observer")],
    ("sub", "$SRV.INFO.ktrdr-trainer.trainer-h-1-abcd", "", roles("trainer"), True),
    ("sub", "$SRV.INFO.ktrdr-cli", "", NONE, True),
    ("sub", "$SRV.>", "", NONE, True),
    ("sub", "$SRV.PING.>", "", NONE, True),
]


@pytest.mark.parametrize("role", ROLES)
async def test_role_is_refused_everything_it_must_not_touch(as_role: Any, role: str) -> None:
    nc, errors = await as_role(role)
    mismatches: list[str] = []
    for n, (kind, subject, queue, allowed, probe_allowed) in enumerate(PROBES):
        may = role in allowed
        if may and not probe_allowed:
            continue
        if kind == "pub":
            await nc.publish(subject, b"probe", reply=f"{nc._inbox_prefix.decode()}.probe")
        else:
            sub = await nc.subscribe(subject, queue=queue)
        sentinel = f"ktrdr.sentinel.{n}"
        await nc.publish(sentinel, b"")
        await errors.wait_for(f'"{sentinel}"')
        word = "publish to" if kind == "pub" else "subscription to"
        refused = any(f'{word} "{subject.lower()}"' in e for e in errors.seen)
        if kind == "sub":
            await sub.unsubscribe()
        errors.seen.clear()
        if refused == may:
            what = f"{kind} {subject}" + (f" (queue {queue})" if queue else "")
            mismatches.append(f"{role}: {what}: {'refused' if refused else 'allowed'}, expected the opposite")
    assert mismatches == []
    assert nc.is_connected  # permission errors never cost the connection
