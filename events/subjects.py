"""Every subject, stream, bucket and consumer name, derived from the message types in events/messages.py,
and every Nats-Msg-Id format (`cmd-<op>`, `<op>.created.<mac>`, `<op>.cancel.<reason>.<mac>`, ...).

The streams: OPS stores every event of an operation but its cancel requests (`ops.*.*.<name>` for each
name of OPS_EVENT_NAMES, the one list of what OPS stores); OPS_CANCELS stores `ops.*.*.cancel`, the only
ops subject a CLI key may publish, so whatever a user writes there is bounded on its own and can never
push another operation's events out of OPS nor touch OPS's dedupe window.

The ids the system's processes publish with are keyed hashes (BLAKE2b in its keyed mode, 128 bits) of what they
identify, under a secret only that publisher holds (`dedupe_key`): nobody else can publish a message
with one of them first and so make the real one a "duplicate" the stream drops.

No other package writes a subject string or a message id: it asks this module. An operation id is one NATS token,
unique, sortable by time, with the domain readable in it: `<domain>-<YYYYmmddTHHMMSSffffff>-<6 hex>`,
e.g. `data-20261128T174900123456-3f9a1c`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime

from events import roles
from events.bounds import DEFAULT_PRIORITY, PRIORITIES, SCHEDULE_NAME_PATTERN, TOKEN_PATTERN
from events.messages import (
    COMMAND_FOR_SUBJECT,
    DOMAINS,
    EVENT_NAMES,
    HELD_NAMES,
    LIFECYCLE_NAMES,
    CancelOperation,
    CancelRequested,
    Command,
    IbRequest,
    LeaseVerb,
    OperationCreated,
)

STREAM_CMD = "CMD"
STREAM_WORK = "WORK"
STREAM_OPS = "OPS"
# ops.*.*.cancel: what users write, bounded apart from OPS. Named to sort after OPS: a client that
# looks a stream up by subject (nats-py's js.subscribe("ops.<domain>.<op>.>") without stream=) is
# given the first of the streams whose subjects overlap, and must keep getting OPS.
STREAM_CANCELS = "OPS_CANCELS"
# Schedules (issue 22): definitions on sched.def.<name> (nats-server fires them), firings on
# sched.fire.<name>, the orchestrator's record of each on sched.hist.<name>; one stream, since a
# schedule's target must be a subject of its own stream.
STREAM_SCHEDULES = "SCHEDULES"
STREAMS: tuple[str, ...] = (STREAM_CMD, STREAM_WORK, STREAM_OPS, STREAM_CANCELS, STREAM_SCHEDULES)  # in creation order
SCHED_DEF_ALL = "sched.def.*"
SCHED_FIRE_ALL = "sched.fire.*"
SCHED_HIST_ALL = "sched.hist.*"
SCHEDULES_SUBJECTS: tuple[str, ...] = (SCHED_DEF_ALL, SCHED_FIRE_ALL, SCHED_HIST_ALL)
SCHEDULES_CONSUMER = "orchestrator-schedules"  # the active orchestrator's durable consumer of firings
ACTORS_BUCKET = "ACTORS"  # KV: presence, key <role>.<actor_id>
LEASES_BUCKET = "LEASES"  # KV: which actor holds which operation, key <op_id> (written by the orchestrator alone)
# The active orchestrator's leader lease (events.messages.Leader), kept in LEASES: only the orchestrator
# role reads or writes that bucket, and the key is no operation's id (those have a domain prefix).
LEADER_KEY = "orchestrator-leader"
SERIES_BUCKET = "SERIES"  # KV: who writes a stored bar series, key series.<SYMBOL>.<TF>
PACING_BUCKET = "PACING"  # KV: IB pacing history, key pacing_key(host, port, client_id)
BARS_BUCKET = "BARS"  # object store: <SYMBOL>/<TF> parquet
MODELS_BUCKET = "MODELS"  # object store: <strategy>/<key>/<file>
CHECKPOINTS_BUCKET = "CHECKPOINTS"  # object store: <op_id>/latest
# KV: the operations index (ktrdr.ops.index): one events.messages.OpSummary per operation under
# t.<yyyymmddHH>.<op_id> and, while it has not ended, live.<op_id>; h.<yyyymmddHH> marks an hour that
# has any; meta.applied (events.messages.IndexMark) says up to which OPS sequence it is folded.
# Written by the active orchestrator alone, read by clients and the page; rebuilt by `ops reindex`.
OPS_INDEX_BUCKET = "OPS_INDEX"
OPS_INDEX_CONSUMER = "ops-index"  # the active orchestrator's consumer of OPS's lifecycle events
# `ktrdr ops reindex`: a request the active orchestrator answers (a client key may send it; only the
# orchestrator writes the index).
REINDEX = "admin.ops.reindex"

CMD_ALL = "cmd.>"
WORK_ALL = "work.>"
OPS_ALL = "ops.>"
CANCEL_ALL = f"ops.*.*.{CancelOperation.name}"
# What a worker (and the ib actor) follows to stop work: the users' cancels, and the orchestrator's
# record of a cancel it honoured or made itself (deadline, parent), on a subject only it publishes on.
CANCELS_FOLLOWED: tuple[str, ...] = (CANCEL_ALL, f"ops.*.*.{CancelRequested.name}")
# Every event name an OPS subject may end with (ops.<domain>.<op_id>.<name>), and who may publish it:
# a domain's workers the held events only (each carrying the holder proof), the orchestrator all but
# the cancel request, a CLI key the cancel request. OPS stores every event name but the cancel request
# (OPS_CANCELS holds those): a new event type is stored once its name is in events.messages.EVENTS.
OPS_EVENT_NAMES: tuple[str, ...] = tuple(n for n in EVENT_NAMES if n != CancelOperation.name)
OPS_SUBJECTS: tuple[str, ...] = tuple(f"ops.*.*.{n}" for n in OPS_EVENT_NAMES)
WORKER_EVENT_NAMES: tuple[str, ...] = HELD_NAMES
ORCHESTRATOR_EVENT_NAMES: tuple[str, ...] = OPS_EVENT_NAMES
LEASE_ALL = "lease.>"
IB_QUEUE_GROUP = roles.IB
# A responder's keepalive while it serves a request (actors/_requests.py): an empty message with
# this header, whose value is the responder's actor id, published to the caller's reply inbox.
WORKING_HEADER = "Ktrdr-Working"
ORCHESTRATOR_CONSUMER = roles.ORCHESTRATOR
ACTOR_ROLES: tuple[str, ...] = roles.ACTOR_ROLES  # in start order
DEFAULT_POOL = "any"

_OP_ID = re.compile(r"^(?P<domain>[a-z]+)-(?P<ts>\d{8}T\d{12})-[0-9a-f]{6}$")
# Pools, roles and actor ids become subject tokens and consumer names: one safe token each.
_TOKEN = re.compile(TOKEN_PATTERN)
_SCHEDULE_NAME = re.compile(SCHEDULE_NAME_PATTERN)


def new_op_id(domain: str) -> str:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    return f"{domain}-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{secrets.token_hex(3)}"


def child_op_id(parent_op_id: str, domain: str, key: str) -> str:
    """A workflow child's id, derived from its parent and what it is for, so an orchestrator that
    restarts mid-workflow plans the very same children (and their creation is deduplicated)."""
    m = _OP_ID.match(parent_op_id)
    if not m or domain not in DOMAINS:
        raise ValueError(f"cannot derive a {domain!r} child of {parent_op_id!r}")
    digest = hashlib.sha256(f"{parent_op_id}/{domain}/{key}".encode()).hexdigest()[:6]
    return f"{domain}-{m['ts']}-{digest}"


def is_op_id(op_id: object) -> bool:
    """A well-formed id of a known domain (anything else is never joined into a subject or path)."""
    if not isinstance(op_id, str):
        return False
    m = _OP_ID.match(op_id)
    return bool(m) and m is not None and m["domain"] in DOMAINS


def domain_of(op_id: str) -> str:
    """The domain encoded in an operation id ('dummy', 'data', 'training')."""
    m = _OP_ID.match(op_id) if isinstance(op_id, str) else None
    if not m or m["domain"] not in DOMAINS:
        raise ValueError(f"{op_id!r} is not an operation id (expected e.g. data-20261128T174900123456-3f9a1c)")
    return m["domain"]


def created_at_of(op_id: str) -> datetime:
    """When the id was made (its timestamp part): `ops list` orders by this."""
    m = _OP_ID.match(op_id)
    if not m:
        raise ValueError(f"{op_id!r} is not an operation id")
    return datetime.strptime(m["ts"], "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)


def is_token(value: object) -> bool:
    return isinstance(value, str) and bool(_TOKEN.match(value))


# ---------------------------------------------------------------------------------------------- cmd
def command(cmd: Command | type[Command]) -> str:
    """cmd.<domain>.<verb> of a command (instance or class)."""
    return f"cmd.{cmd.domain}.{cmd.verb}"


def command_for_subject(subject: str) -> type[Command] | None:
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != "cmd":
        return None
    return COMMAND_FOR_SUBJECT.get((parts[1], parts[2]))


# ---------------------------------------------------------------------------------------------- work
# One subject (and one durable consumer) per pool and priority. Normal work keeps the layout from
# before priorities (`work.<domain>.<pool>`, consumer `work-<domain>-<pool>`), so items queued by an
# older orchestrator are normal items of the same consumer; high and low add a last token
# (`work.<domain>.<pool>.high`) and lead the consumer name (`work-high-<domain>-<pool>`: a domain is
# never "high" or "low", so no pool name can make one consumer name mean two).
def work(domain: str, pool: str = DEFAULT_POOL, priority: str = DEFAULT_PRIORITY) -> str:
    if domain not in DOMAINS or not is_token(pool) or priority not in PRIORITIES:
        raise ValueError(f"no work subject for domain {domain!r}, pool {pool!r}, priority {priority!r}")
    return f"work.{domain}.{pool}" if priority == DEFAULT_PRIORITY else f"work.{domain}.{pool}.{priority}"


def work_consumer(domain: str, pool: str = DEFAULT_POOL, priority: str = DEFAULT_PRIORITY) -> str:
    return f"work-{domain}-{pool}" if priority == DEFAULT_PRIORITY else f"work-{priority}-{domain}-{pool}"


def parse_work_subject(subject: str) -> tuple[str, str, str] | None:
    """(domain, pool, priority) of a work subject, or None."""
    parts = subject.split(".")
    if len(parts) not in (3, 4) or parts[0] != "work" or parts[1] not in DOMAINS:
        return None
    if len(parts) == 3:
        return parts[1], parts[2], DEFAULT_PRIORITY
    if parts[3] == DEFAULT_PRIORITY or parts[3] not in PRIORITIES:
        return None
    return parts[1], parts[2], parts[3]


# ---------------------------------------------------------------------------------------------- Nats-Msg-Id
# Each publish that may be retried or repeated carries one of these ids, so the stream stores it once.
# A stream dedupes by id across all its subjects, so an id anyone could compute could be published
# first, by anyone who may publish anywhere on that stream, and the real message dropped as its
# duplicate: the system's own ids are keyed (`key`: the publisher's dedupe key, bytes).
DEDUPE_KEY_BYTES = 32
_MAC_HEX = 32  # 128 bits of keyed BLAKE2b: no one without the key finds or collides with one


def _mac(key: bytes, *parts: str) -> str:
    if len(key) < 16:
        raise ValueError("a dedupe key has at least 16 bytes")
    # Keyed BLAKE2b is a MAC (RFC 7693) at half HMAC-SHA256's cost here (1.0 against 2.1 us an id):
    # it runs for every progress event. Keys longer than BLAKE2b takes are hashed down first.
    k = key if len(key) <= hashlib.blake2b.MAX_KEY_SIZE else hashlib.blake2b(key).digest()
    return hashlib.blake2b("\x1f".join(parts).encode(), key=k, digest_size=_MAC_HEX // 2).hexdigest()


def new_dedupe_key() -> bytes:
    """A process's own key (a worker's: it retries only within its own life)."""
    return secrets.token_bytes(DEDUPE_KEY_BYTES)


def derived_dedupe_key(secret: bytes) -> bytes:
    """The key of a publisher that must keep it across restarts (the orchestrator), from a secret it
    keeps anyway (its NKEY seed, or a 0600 file of its own)."""
    return hmac.new(secret, b"ktrdr dedupe ids v1", hashlib.sha256).digest()


def command_msg_id(op_id: str) -> str:
    """A command's: a client that retries (or a bench that resends) submits it once. The op id is
    the client's own random choice, and no role but the orchestrator reads CMD."""
    return f"cmd-{op_id}"


def user_cancel_msg_id(op_id: str) -> str:
    """A client's cancel: random, so a retried publish of it is stored once and nobody can pre-empt it."""
    return f"{op_id}.{CancelOperation.name}.{secrets.token_hex(12)}"


def work_msg_id(op_id: str, key: bytes) -> str:
    """An operation's work item: routed again after a restart, stored once."""
    return f"work-{op_id}.{_mac(key, 'work', op_id)}"


def created_msg_id(op_id: str, key: bytes) -> str:
    """An operation's OperationCreated: whoever creates it again (a redelivered command, a restarted
    orchestrator: same key) stores nothing."""
    return f"{op_id}.{OperationCreated.name}.{_mac(key, OperationCreated.name, op_id)}"


def event_msg_id(op_id: str, actor_id: str, seq: int, key: bytes) -> str:
    """An actor's event: its per-actor sequence makes a resent event the same message."""
    return f"{op_id}.{_mac(key, 'event', op_id, actor_id, str(seq))}"


def terminal_msg_id(op_id: str, actor_id: str, key: bytes) -> str:
    """A terminal event's: a retried terminal is stored once, and nobody can publish that id first to
    make the real verdict a "duplicate"."""
    return f"{op_id}.terminal.{_mac(key, 'terminal', op_id, actor_id)}"


class MsgIds:
    """The id builders above bound to one publisher's dedupe key (`actor.ids.work(op_id)`)."""

    def __init__(self, key: bytes) -> None:
        _mac(key, "check")  # a short key fails here, not at the first publish
        self.key = key

    def work(self, op_id: str) -> str:
        return work_msg_id(op_id, self.key)

    def created(self, op_id: str) -> str:
        return created_msg_id(op_id, self.key)

    def event(self, op_id: str, actor_id: str, seq: int) -> str:
        return event_msg_id(op_id, actor_id, seq, self.key)

    def terminal(self, op_id: str, actor_id: str) -> str:
        return terminal_msg_id(op_id, actor_id, self.key)


# ---------------------------------------------------------------------------------------------- ops
def ops(op_id: str, event: str = ">") -> str:
    """ops.<domain>.<op_id>.<event>; event '>' gives the wildcard for the whole operation."""
    return f"ops.{domain_of(op_id)}.{op_id}.{event}"


def event(ev: object) -> str:
    """The subject an event (or a cancel request) is published on."""
    return ops(ev.op_id, type(ev).name)  # type: ignore[attr-defined]


def cancel(op_id: str) -> str:
    return ops(op_id, CancelOperation.name)


def all_ops(event_name: str) -> str:
    """ops.*.*.<event name>: that event of every operation."""
    return f"ops.*.*.{event_name}"


_LIFECYCLE_STORED = frozenset(n for n in LIFECYCLE_NAMES if n in OPS_EVENT_NAMES)


def lifecycle_filters(op_id: str | None = None) -> list[str]:
    """Filters for the lifecycle events OPS stores (everything but progress and cancel requests, which
    OPS_CANCELS holds; the orchestrator records each it honours as CancelRequested) of one operation or
    of all."""
    names = [n for n in LIFECYCLE_NAMES if n in OPS_EVENT_NAMES]
    if op_id is None:
        return [all_ops(n) for n in names]
    return [ops(op_id, n) for n in names]


def is_lifecycle(subject: str) -> bool:
    """Whether an OPS subject carries a lifecycle event (what lifecycle_filters() select)."""
    return subject.rsplit(".", 1)[-1] in _LIFECYCLE_STORED


JS_API = "$JS.API"  # JetStream's API prefix (a raw request: ktrdr.transport.streams.stream_api)


def next_msg_api(stream: str, consumer: str) -> str:
    """A pull consumer's next-message request (actors/_pull.py pull_next sends its own, one inbox each)."""
    return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"


def direct_get_api(stream: str) -> str:
    """JetStream's direct get of a stream (a batched get reads without a consumer)."""
    return f"$JS.API.DIRECT.GET.{stream}"


def stream_of(subject: str) -> str:
    """The stream an ops subject is stored in."""
    return STREAM_CANCELS if subject.endswith(f".{CancelOperation.name}") else STREAM_OPS


def worker_events(domain: str) -> list[str]:
    """What a `domain` worker may publish on OPS: exactly its held events, of any of its operations."""
    return [f"ops.{domain}.*.{name}" for name in WORKER_EVENT_NAMES]


# ---------------------------------------------------------------------------------------------- lease
def lease(domain: str, verb: LeaseVerb) -> str:
    """lease.<domain>.<verb>: a worker's lease request to the orchestrator (its role may publish only
    its own domain's, so NATS proves the requester's domain)."""
    return f"lease.{domain}.{verb}"


def parse_lease_subject(subject: str) -> tuple[str, str] | None:
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != "lease" or parts[1] not in DOMAINS or parts[2] not in ("claim", "renew",
                                                                                             "release"):
        return None
    return parts[1], parts[2]


def parse_ops_subject(subject: str) -> tuple[str, str, str] | None:
    """(domain, op_id, event) for an ops.* subject, or None when it is not one."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != "ops":
        return None
    return parts[1], parts[2], parts[3]


# ---------------------------------------------------------------------------------------------- ib
def ib(request: IbRequest | type[IbRequest], pool: str = DEFAULT_POOL) -> str:
    """ib.<verb> for the default pool, ib.<verb>.<pool> for the ib actors of one IB account/gateway."""
    if pool == DEFAULT_POOL:
        return f"ib.{request.verb}"
    if not is_token(pool):
        raise ValueError(f"no ib subject for pool {pool!r}")
    return f"ib.{request.verb}.{pool}"


# ---------------------------------------------------------------------------------------------- schedules
def _schedule_name(name: str) -> str:
    if not isinstance(name, str) or not _SCHEDULE_NAME.match(name):
        raise ValueError(f"{str(name)[:40]!r} is not a schedule name")
    return name


def schedule_def(name: str) -> str:
    return f"sched.def.{_schedule_name(name)}"


def schedule_fire(name: str) -> str:
    return f"sched.fire.{_schedule_name(name)}"


def schedule_hist(name: str) -> str:
    return f"sched.hist.{_schedule_name(name)}"


def schedule_of_subject(subject: str) -> str | None:
    """The schedule a sched.* subject is about, or None."""
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != "sched" or parts[1] not in ("def", "fire", "hist"):
        return None
    return parts[2] if _SCHEDULE_NAME.match(parts[2]) else None


def schedule_op_id(domain: str, name: str, fired_at: datetime, seq: int) -> str:
    """The operation a firing becomes: derived from the schedule, the firing's time and its place in
    SCHEDULES, so a redelivered firing (the same stored message) makes the same op id, and its creation
    is a duplicate (the orchestrator's intake knows it)."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}")
    ts = fired_at.astimezone(UTC)
    digest = hashlib.sha256(f"schedule/{_schedule_name(name)}/{ts.isoformat()}/{int(seq)}".encode()).hexdigest()[:6]
    return f"{domain}-{ts:%Y%m%dT%H%M%S%f}-{digest}"


def schedule_fired_msg_id(name: str, seq: int, outcome: str) -> str:
    """The orchestrator's record of a firing's outcome: one per firing and outcome (a buffered firing
    is recorded buffered, then started), however often it is handled."""
    if outcome not in ("started", "skipped", "buffered", "missed"):
        raise ValueError(f"unknown firing outcome {outcome!r}")
    return f"sched-{_schedule_name(name)}-{int(seq)}-{outcome}"


# ---------------------------------------------------------------------------------------------- presence
def heartbeat_key(role: str, actor_id: str) -> str:
    return f"{role}.{actor_id}"


def kv_updates(bucket: str) -> str:
    """The subject every update of a KV bucket is published on (a core subscription sees them)."""
    return f"$KV.{bucket}.>"


def kv_key_of(bucket: str, subject: str) -> str:
    return subject[len(f"$KV.{bucket}.") :]


_KV_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def pacing_key(host: str, port: int, client_id: int) -> str:
    """The PACING key of one IB connection (`127_0_0_1-4002-11`): IB paces per gateway session, and a
    restarted ib actor comes back with the same host, port and client id. Any character a KV key or
    subject token might not take becomes "_"; a very long host name is shortened with a digest."""
    h = _KV_UNSAFE.sub("_", host) or "_"
    if len(h) > 64:
        h = f"{h[:48]}_{hashlib.sha256(host.encode()).hexdigest()[:12]}"
    return f"{h}-{int(port)}-{int(client_id)}"


# ---------------------------------------------------------------------------------------------- discovery
# The NATS services protocol (ADR-32, nats-py's nats.micro): each actor is an instance of the service
# `ktrdr-<role>` with its actor id (made one token) and answers `$SRV.<VERB>`, `$SRV.<VERB>.<name>` and
# `$SRV.<VERB>.<name>.<id>` for each verb; `nats micro ls` lists them.
SRV_PREFIX = "$SRV"
SRV_VERBS: tuple[str, ...] = ("PING", "INFO", "STATS")
SERVICE_NAME_PREFIX = "ktrdr-"


def service_name(role: str) -> str:
    """The micro service name of an actor role (`ktrdr-job-manager`)."""
    if not _TOKEN.match(role):
        raise ValueError(f"no service name for role {role!r}")
    return f"{SERVICE_NAME_PREFIX}{role}"


def service_id(actor_id: str) -> str:
    """An actor id as one subject token (a host name may hold dots): any other character becomes "_"."""
    return _KV_UNSAFE.sub("_", actor_id) or "_"


def discovery(verb: str, name: str | None = None, instance: str | None = None) -> str:
    """`$SRV.PING`, `$SRV.PING.<name>` or `$SRV.PING.<name>.<id>` (nats.micro.service.control_subject)."""
    if verb not in SRV_VERBS:
        raise ValueError(f"unknown discovery verb {verb!r}")
    parts = [SRV_PREFIX, verb, *([name] if name else []), *([instance] if name and instance else [])]
    return ".".join(parts)


def discovery_subjects(name: str, instance: str) -> list[str]:
    """What one service instance subscribes: every verb at its three narrowings."""
    return [discovery(v, *args) for v in SRV_VERBS for args in ((), (name,), (name, instance))]
