"""Who may use which subject: the least-privilege allow-lists of each role, as NATS's own
authorization users carry them. This is part of the vocabulary: the subjects come from
events/subjects.py, and the JetStream API subjects are the ones nats-py 2.16 sends (read from its
js/manager.py, js/client.py, js/kv.py and js/object_store.py); tests/security runs every call of
every role against a real server. ktrdr/auth.py makes the credentials that carry these lists.

Each role gets its own inbox prefix (`_INBOX_<role>`) and may subscribe only below it, so replies
and pull deliveries meant for one role are not readable by another.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from events import subjects
from events.bounds import IB_KEEPALIVE_S, PRIORITIES, TOKEN_PATTERN
from events.messages import ROLE_FOR_DOMAIN, WORK_COMMANDS
from events.roles import CLI, IB, JOB_MANAGER, OBSERVER, ORCHESTRATOR, ROLES, check_role, inbox_prefix

__all__ = ["DEFAULT_POOLS", "DISCOVERY_CALLERS", "KV_BUCKETS", "OBJECT_BUCKETS", "ROLES", "STREAMS", "Permissions",
           "check_role", "inbox_prefix", "permissions"]
# The pools each worker domain serves (work.<domain>.<pool>, durable `work-<domain>-<pool>`).
# Consumer names are whole tokens in the API subjects, so each pool is listed: adding a pool
# (an ib pool name, say) means re-rendering the server config with it (`ktrdr up` does).
DEFAULT_POOLS: Mapping[str, tuple[str, ...]] = {c.domain: c.pools for c in WORK_COMMANDS}
WORKER_DOMAIN = {role: domain for domain, role in ROLE_FOR_DOMAIN.items()}
_COMMAND_OF_ROLE = {c.role: c for c in WORK_COMMANDS}

STREAMS = subjects.STREAMS
KV_BUCKETS = (subjects.ACTORS_BUCKET, subjects.LEASES_BUCKET, subjects.PACING_BUCKET, subjects.SERIES_BUCKET,
              subjects.OPS_INDEX_BUCKET)
OBJECT_BUCKETS = (subjects.BARS_BUCKET, subjects.MODELS_BUCKET, subjects.CHECKPOINTS_BUCKET)
IB_QUEUE_GROUP = subjects.IB_QUEUE_GROUP
# The ib actor answers a request with interim pacing notices, keepalives (one every IB_KEEPALIVE_S),
# caller probes and one final reply; IB's 60-per-10-minutes rule can hold a request for up to 10
# minutes, so replies stay allowed for 15, and that long's keepalives plus 200 others may be sent.
IB_RESPONSES_EXPIRE_S = 15 * 60
IB_RESPONSES_MAX = int(IB_RESPONSES_EXPIRE_S / IB_KEEPALIVE_S) + 200
IB_RESPONSES_EXPIRES = f"{IB_RESPONSES_EXPIRE_S // 60}m"
# The orchestrator answers each lease request once, at once.
LEASE_RESPONSES_MAX = 1
LEASE_RESPONSES_EXPIRES = "1m"
# Discovery (the NATS services protocol): who may send `$SRV.PING|INFO|STATS` requests and read the
# answers on its inbox. Each actor subscribes only its own service's subjects and answers once per
# request (allow_responses); actors/_discovery.py answers only on these roles' inboxes.
DISCOVERY_CALLERS: tuple[str, ...] = (CLI, OBSERVER)
DISCOVERY_RESPONSES_MAX = 1
DISCOVERY_RESPONSES_EXPIRES = "1m"
_POOL_RE = re.compile(TOKEN_PATTERN)
_DOMAINS = tuple(c.domain for c in WORK_COMMANDS)


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responses_max: int | None = None
    responses_expires: str | None = None


class _Grant:
    """Collects one role's allow-lists from the building blocks below (order kept, no duplicates)."""

    def __init__(self, role: str) -> None:
        self.pub: dict[str, None] = {}
        self.sub: dict[str, None] = {}
        self.allow_sub(f"{inbox_prefix(role)}.>")
        # Every process binds to the streams the orchestrator made; reading their config is harmless.
        self.api("INFO", *(f"STREAM.INFO.{s}" for s in STREAMS))

    def allow_pub(self, *subjects: str) -> None:
        self.pub.update(dict.fromkeys(subjects))

    def allow_sub(self, *subjects: str) -> None:
        self.sub.update(dict.fromkeys(subjects))

    def api(self, *calls: str) -> None:
        self.allow_pub(*(f"$JS.API.{c}" for c in calls))

    def _consumer_reads(self, stream: str, *, named: bool = True) -> None:
        # Ephemeral push / ordered consumers (nats-py: CONSUMER.CREATE.<S> without a name, or
        # .<S>.<name>.<filter> with one), their flow-control replies (v1 `$JS.FC.<S>.<C>.*`; the
        # v2 format behind a server feature flag is `$JS.FC.<domain>.<acc hash>.<S>.<C>.*`),
        # consumer info (KV keys/watch), delete (read_events cleans up), direct and plain gets.
        # Without `named`, only the unnamed create: nats-py 2.16's ordered consumers (js.subscribe,
        # KV keys/watch, object gets) and our reads (ktrdr.transport.replay) send no name, and on
        # that subject the server refuses a durable ("consumer expected to be ephemeral"), so such a
        # role can make only consumers that go away once nobody reads them.
        self.api(f"STREAM.INFO.{stream}", f"CONSUMER.CREATE.{stream}", f"CONSUMER.INFO.{stream}.*",
                 f"CONSUMER.DELETE.{stream}.*", f"DIRECT.GET.{stream}", f"DIRECT.GET.{stream}.>",
                 f"STREAM.MSG.GET.{stream}")
        if named:
            self.api(f"CONSUMER.CREATE.{stream}.>")
        self.allow_pub(f"$JS.FC.{stream}.>", f"$JS.FC._.*.{stream}.>")

    def _gets(self, stream: str) -> None:
        """Direct and plain gets of a stream's messages: no consumer."""
        self.api(f"DIRECT.GET.{stream}", f"DIRECT.GET.{stream}.>", f"STREAM.MSG.GET.{stream}")

    def read_ops(self) -> None:
        """The system's processes: consumers on OPS, gets on OPS and OPS_CANCELS (the last cancel request)."""
        self._consumer_reads(subjects.STREAM_OPS)
        self._gets(subjects.STREAM_CANCELS)
        self.api("STREAM.NAMES")  # js.subscribe(subject) without stream= looks the stream up

    def reader_reads(self) -> None:
        """A reader key (cli, observer): only ephemeral consumers on OPS (they go away once nobody reads
        them; the stream caps how many there are, and the server refuses one that would deliver into
        OPS itself), gets on OPS, presence reads."""
        self._consumer_reads(subjects.STREAM_OPS, named=False)
        self._consumer_reads(f"KV_{subjects.ACTORS_BUCKET}", named=False)
        self._gets(f"KV_{subjects.OPS_INDEX_BUCKET}")  # `ops list` and the page read the index, never write it
        self.api("STREAM.NAMES")  # js.subscribe(subject) without stream= looks the stream up

    def kv_read(self, bucket: str) -> None:
        self._consumer_reads(f"KV_{bucket}")

    def kv_write(self, bucket: str, keys: str) -> None:
        # put / create / update (CAS: Nats-Expected-Last-Subject-Sequence) / delete are JetStream
        # publishes on $KV.<bucket>.<key>; the PubAck comes back on the role's inbox.
        self.api(f"STREAM.INFO.KV_{bucket}")
        self.allow_pub(f"$KV.{bucket}.{keys}")

    def obj_read(self, bucket: str) -> None:
        # get: info via STREAM.MSG.GET (last $O.<B>.M.<name>), chunks via an ordered consumer
        # found by subject (STREAM.NAMES); list: a watch (ordered consumer, last per subject).
        self._consumer_reads(f"OBJ_{bucket}")
        self.api("STREAM.NAMES")

    def obj_write(self, bucket: str) -> None:
        # put publishes chunks and the meta record; replacing or deleting retires the old chunks with
        # a rollup message on their own chunk subject (ktrdr.transport.objects). No role gets
        # STREAM.PURGE: a purge's filter is in its payload, so one granted purge empties the whole
        # bucket (issue 18, F5).
        self.obj_read(bucket)
        self.allow_pub(f"$O.{bucket}.C.>", f"$O.{bucket}.M.>")

    def presence(self, role: str) -> None:
        self.kv_write("ACTORS", f"{role}.>")  # own key <role>.<actor_id>; host names may hold dots

    def series_lease(self) -> None:
        # One writer per series: `series.<SYMBOL>.<TF>` in its own bucket SERIES (loads, `ktrdr data
        # import`), so no worker role writes anything of LEASES (issue 18, F2).
        self.kv_read(subjects.SERIES_BUCKET)
        self.kv_write(subjects.SERIES_BUCKET, "series.>")

    def durable_pull(self, stream: str, consumer: str, filter_subject: str) -> None:
        # Only the named create whose subject carries the filter: the server checks the payload's
        # filter against the subject, so a job-manager cannot make `work-data-any` read training
        # work. (The legacy CONSUMER.DURABLE.CREATE has no filter in its subject: not granted.)
        self.api(f"CONSUMER.CREATE.{stream}.{consumer}.{filter_subject}", f"CONSUMER.INFO.{stream}.{consumer}",
                 f"CONSUMER.MSG.NEXT.{stream}.{consumer}")
        # ack / nak / in_progress / term are publishes on the delivery's reply subject.
        self.allow_pub(f"$JS.ACK.{stream}.{consumer}.>", f"$JS.ACK._.*.{stream}.{consumer}.>")

    def discovery_service(self, role: str) -> None:
        """An actor answers the discovery requests of its own service: `$SRV.<VERB>`, `.<name>` and
        `.<name>.<id>` (ids are one token), never another service's."""
        name = subjects.service_name(role)
        narrowings: tuple[tuple[str, ...], ...] = ((), (name,), (name, "*"))
        self.allow_sub(*(subjects.discovery(v, *args) for v in subjects.SRV_VERBS for args in narrowings))

    def discovery_caller(self) -> None:
        """A discovery caller pings every service at any narrowing; the answers come to its inbox."""
        self.allow_pub(*(f"{subjects.discovery(v)}{tail}" for v in subjects.SRV_VERBS for tail in ("", ".>")))

    def worker(self, role: str, pools: Mapping[str, Sequence[str]]) -> None:
        domain = WORKER_DOMAIN[role]
        for pool in pools.get(domain, ("any",)):
            for prio in PRIORITIES:  # one consumer per priority (events.subjects.work)
                self.durable_pull(subjects.STREAM_WORK, subjects.work_consumer(domain, pool, prio),
                                  subjects.work(domain, pool, prio))
        # Exactly the held events of its own domain: created, started, rejected, cancel_requested and
        # the orchestrator's own tokens are the orchestrator's alone (issue 18, F4), and leases are
        # asked of it (lease.<domain>.*), never written: the orchestrator alone writes LEASES (F2).
        self.allow_pub(*subjects.worker_events(domain), subjects.lease(domain, "*"))  # type: ignore[arg-type]
        self.allow_sub(*subjects.CANCELS_FOLLOWED)
        self.read_ops()
        self.presence(role)
        cmd = _COMMAND_OF_ROLE[role]
        for bucket in cmd.reads:
            self.obj_read(_bucket(bucket))
        for bucket in cmd.writes:
            self.obj_write(_bucket(bucket))

    def build(self, **responses: Any) -> Permissions:
        return Permissions(tuple(self.pub), tuple(self.sub), **responses)


def _bucket(name: str) -> str:
    if name not in OBJECT_BUCKETS:
        raise ValueError(f"a command declares the unknown object bucket {name!r}; expected one of {OBJECT_BUCKETS}")
    return name


def _orchestrator(g: _Grant) -> None:
    managed = [*STREAMS, *(f"KV_{b}" for b in KV_BUCKETS), *(f"OBJ_{b}" for b in OBJECT_BUCKETS)]
    for s in managed:  # provisions; never deletes or purges a stream
        g.api(f"STREAM.CREATE.{s}", f"STREAM.UPDATE.{s}", f"STREAM.INFO.{s}")
    g.durable_pull("CMD", subjects.ORCHESTRATOR_CONSUMER, "cmd.>")
    # What today's code sends; CMD has one consumer.
    g.api(f"CONSUMER.DURABLE.CREATE.CMD.{subjects.ORCHESTRATOR_CONSUMER}")
    g.api("CONSUMER.INFO.WORK.*", "CONSUMER.NAMES.WORK", "CONSUMER.LIST.WORK")  # queued work per pool
    g.allow_pub("ops.>", "work.>")
    g.allow_sub("ops.>", "$KV.ACTORS.>", subjects.LEASE_ALL)  # lease requests: answered on the requester's inbox
    g.read_ops()
    g.kv_read("ACTORS")
    g.presence(ORCHESTRATOR)
    g.kv_read("LEASES")
    g.kv_write("LEASES", "*")  # the only writer: grants, renews, releases and drops operation leases
    g.obj_write("CHECKPOINTS")  # deletes the checkpoints of finished operations
    # The operations index: it alone writes it, folding OPS's lifecycle events through its own
    # consumer (ack all up to a batch once its summaries are stored), and answers `ops reindex`.
    g.kv_read(subjects.OPS_INDEX_BUCKET)
    g.kv_write(subjects.OPS_INDEX_BUCKET, ">")
    g.api(f"CONSUMER.CREATE.OPS.{subjects.OPS_INDEX_CONSUMER}", f"CONSUMER.INFO.OPS.{subjects.OPS_INDEX_CONSUMER}",
          f"CONSUMER.DELETE.OPS.{subjects.OPS_INDEX_CONSUMER}", f"CONSUMER.MSG.NEXT.OPS.{subjects.OPS_INDEX_CONSUMER}")
    g.allow_pub(f"$JS.ACK.OPS.{subjects.OPS_INDEX_CONSUMER}.>", f"$JS.ACK._.*.OPS.{subjects.OPS_INDEX_CONSUMER}.>")
    g.allow_sub(subjects.REINDEX)
    # Schedules: it takes the firings nats-server stores (a durable consumer) and records each one.
    g.durable_pull(subjects.STREAM_SCHEDULES, subjects.SCHEDULES_CONSUMER, subjects.SCHED_FIRE_ALL)
    g.api(f"CONSUMER.DURABLE.CREATE.{subjects.STREAM_SCHEDULES}.{subjects.SCHEDULES_CONSUMER}")
    g._gets(subjects.STREAM_SCHEDULES)
    g.allow_pub(subjects.SCHED_HIST_ALL)


def permissions(role: str, *, pools: Mapping[str, Sequence[str]] = DEFAULT_POOLS) -> Permissions:
    """The allow-lists of one role. Anything not listed is refused by the server."""
    check_role(role)
    for domain, names in pools.items():
        for p in names:
            if not _POOL_RE.match(p):
                raise ValueError(f"pool name {p!r} of {domain} must be 1-32 lower-case letters, digits, '_' or '-'")
    g = _Grant(role)
    if role in DISCOVERY_CALLERS:
        g.discovery_caller()
    else:
        g.discovery_service(role)
    if role == ORCHESTRATOR:
        _orchestrator(g)
        return g.build(responses_max=LEASE_RESPONSES_MAX, responses_expires=LEASE_RESPONSES_EXPIRES)
    elif role in WORKER_DOMAIN:
        g.worker(role, pools)
        if role == JOB_MANAGER:
            g.allow_pub("ib.>")  # requests; the answers come back on _INBOX_job-manager.>
            g.series_lease()
        # its discovery answers: once per request (it answers no other request)
        return g.build(responses_max=DISCOVERY_RESPONSES_MAX, responses_expires=DISCOVERY_RESPONSES_EXPIRES)
    elif role == IB:
        g.allow_sub(f"ib.> {IB_QUEUE_GROUP}", *subjects.CANCELS_FOLLOWED)  # ib.> only inside the queue group
        g.presence(IB)
        g.kv_read("PACING")
        g.kv_write("PACING", ">")
        return g.build(responses_max=IB_RESPONSES_MAX, responses_expires=IB_RESPONSES_EXPIRES)
    elif role == CLI:
        g.allow_pub("cmd.>", "ops.*.*.cancel", subjects.REINDEX)  # reindex: asked of the orchestrator
        g.allow_sub("ops.>")
        g.reader_reads()
        g.obj_read("MODELS")
        g.obj_write("BARS")  # ktrdr data import
        g.series_lease()
        # `ktrdr schedule`: definitions (the server fires them) and manual firings; reads by gets.
        g.allow_pub(subjects.SCHED_DEF_ALL, subjects.SCHED_FIRE_ALL)
        g._gets(subjects.STREAM_SCHEDULES)
    elif role == OBSERVER:
        g.allow_sub("ops.>")
        g.reader_reads()
        g._gets(subjects.STREAM_SCHEDULES)  # `schedule list/show`, the page
    return g.build()


