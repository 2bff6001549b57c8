"""Every subject, stream, bucket and consumer name, derived from the message types in events/messages.py,
and every Nats-Msg-Id format (`cmd-<op>`, `work-<op>`, `<op>.created`, `<op>.cancel.<reason>`, ...).

No other package writes a subject string or a message id: it asks this module. An operation id is one NATS token,
unique, sortable by time, with the domain readable in it: `<domain>-<YYYYmmddTHHMMSSffffff>-<6 hex>`,
e.g. `data-20261128T174900123456-3f9a1c`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime

from events import roles
from events.bounds import TOKEN_PATTERN
from events.messages import (
    COMMAND_FOR_DOMAIN,
    DOMAINS,
    EVENT_NAMES,
    HELD_NAMES,
    LIFECYCLE_NAMES,
    CancelOperation,
    CancelReason,
    Command,
    IbRequest,
    LeaseVerb,
    OperationCreated,
)

STREAM_CMD = "CMD"
STREAM_WORK = "WORK"
STREAM_OPS = "OPS"
ACTORS_BUCKET = "ACTORS"  # KV: presence, key <role>.<actor_id>
LEASES_BUCKET = "LEASES"  # KV: which actor holds which operation, key <op_id> (written by the orchestrator alone)
SERIES_BUCKET = "SERIES"  # KV: who writes a stored bar series, key series.<SYMBOL>.<TF>
PACING_BUCKET = "PACING"  # KV: IB pacing history, key pacing_key(host, port, client_id)
BARS_BUCKET = "BARS"  # object store: <SYMBOL>/<TF> parquet
MODELS_BUCKET = "MODELS"  # object store: <strategy>/<key>/<file>
CHECKPOINTS_BUCKET = "CHECKPOINTS"  # object store: <op_id>/latest

CMD_ALL = "cmd.>"
WORK_ALL = "work.>"
OPS_ALL = "ops.>"
CANCEL_ALL = f"ops.*.*.{CancelOperation.name}"
# Every event name an OPS subject may end with (ops.<domain>.<op_id>.<name>), and who may publish it:
# a domain's workers the held events only (each carrying the holder proof), the orchestrator all but
# the cancel request, a CLI key the cancel request. The one list of OPS event subjects.
OPS_EVENT_NAMES: tuple[str, ...] = EVENT_NAMES
WORKER_EVENT_NAMES: tuple[str, ...] = HELD_NAMES
ORCHESTRATOR_EVENT_NAMES: tuple[str, ...] = tuple(n for n in EVENT_NAMES if n != CancelOperation.name)
LEASE_ALL = "lease.>"
IB_QUEUE_GROUP = roles.IB
ORCHESTRATOR_CONSUMER = roles.ORCHESTRATOR
ACTOR_ROLES: tuple[str, ...] = roles.ACTOR_ROLES  # in start order
DEFAULT_POOL = "any"

_OP_ID = re.compile(r"^(?P<domain>[a-z]+)-(?P<ts>\d{8}T\d{12})-[0-9a-f]{6}$")
# Pools, roles and actor ids become subject tokens and consumer names: one safe token each.
_TOKEN = re.compile(TOKEN_PATTERN)


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
    cls = COMMAND_FOR_DOMAIN.get(parts[1])
    return cls if cls is not None and cls.verb == parts[2] else None


# ---------------------------------------------------------------------------------------------- work
def work(domain: str, pool: str = DEFAULT_POOL) -> str:
    if domain not in DOMAINS or not is_token(pool):
        raise ValueError(f"no work subject for domain {domain!r}, pool {pool!r}")
    return f"work.{domain}.{pool}"


def work_consumer(domain: str, pool: str = DEFAULT_POOL) -> str:
    return f"work-{domain}-{pool}"


def parse_work_subject(subject: str) -> tuple[str, str] | None:
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != "work" or parts[1] not in DOMAINS:
        return None
    return parts[1], parts[2]


# ---------------------------------------------------------------------------------------------- Nats-Msg-Id
# Each publish that may be retried or repeated carries one of these ids, so the stream stores it once.
def command_msg_id(op_id: str) -> str:
    """A command's: a client that retries (or a bench that resends) submits it once."""
    return f"cmd-{op_id}"


def work_msg_id(op_id: str) -> str:
    """An operation's work item: routed again after a restart, stored once."""
    return f"work-{op_id}"


def created_msg_id(op_id: str) -> str:
    """An operation's OperationCreated: whoever creates it again (a redelivered command) stores nothing."""
    return f"{op_id}.{OperationCreated.name}"


def cancel_msg_id(op_id: str, reason_code: CancelReason) -> str:
    """A cancel the orchestrator records itself (reason `parent` or `deadline`): once per operation."""
    return f"{op_id}.{CancelOperation.name}.{reason_code}"


def event_msg_id(op_id: str, actor_id: str, seq: int) -> str:
    """An actor's event: its per-actor sequence makes a resent event the same message."""
    return f"{op_id}.{actor_id}.{seq}"


def terminal_msg_id(op_id: str, actor_id: str, secret: str) -> str:
    """A terminal event's, with a secret the publisher never shows before it publishes the verdict: a
    retried terminal is stored once, and nobody can publish that id first to make it a "duplicate"."""
    return f"{op_id}.{actor_id}.{secret}.terminal"


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


def lifecycle_filters(op_id: str | None = None) -> list[str]:
    """Filters for the lifecycle events (everything but progress) of one operation or of all."""
    if op_id is None:
        return [all_ops(n) for n in LIFECYCLE_NAMES]
    return [ops(op_id, n) for n in LIFECYCLE_NAMES]


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
