"""Subject builders for every subject in DESIGN.md, and operation ids.

An operation id is one NATS token, unique, sortable by time, with the domain readable in it:
`<domain>-<YYYYmmddTHHMMSSffffff>-<6 hex>`, e.g. `data-20261128T174900123456-3f9a1c`.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

DOMAINS = ("dummy", "data", "training")
# cmd.<domain>.<verb> for each command type
COMMAND_SUBJECTS = {"RunDummy": "cmd.dummy.run", "LoadData": "cmd.data.load", "StartTraining": "cmd.training.start"}

STREAM_CMD = "CMD"
STREAM_WORK = "WORK"
STREAM_OPS = "OPS"
ACTORS_BUCKET = "ACTORS"

CMD_ALL = "cmd.>"
WORK_ALL = "work.>"
OPS_ALL = "ops.>"
CANCEL_ALL = "ops.*.*.cancel"
IB_QUEUE_GROUP = "ib"

_OP_ID = re.compile(r"^(?P<domain>[a-z]+)-\d{8}T\d{12}-[0-9a-f]{6}$")


def new_op_id(domain: str) -> str:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    return f"{domain}-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{secrets.token_hex(3)}"


def is_op_id(op_id: str) -> bool:
    return bool(_OP_ID.match(op_id))


def domain_of(op_id: str) -> str:
    """The domain encoded in an operation id ('dummy', 'data', 'training')."""
    m = _OP_ID.match(op_id)
    if not m or m["domain"] not in DOMAINS:
        raise ValueError(f"{op_id!r} is not an operation id (expected e.g. data-20261128T174900123456-3f9a1c)")
    return m["domain"]


def cmd(domain: str, verb: str) -> str:
    return f"cmd.{domain}.{verb}"


def work(domain: str) -> str:
    return f"work.{domain}"


def ops(op_id: str, event: str = ">") -> str:
    """ops.<domain>.<op_id>.<event>; event '>' gives the wildcard for the whole operation."""
    return f"ops.{domain_of(op_id)}.{op_id}.{event}"


def cancel(op_id: str) -> str:
    return ops(op_id, "cancel")


def ib(verb: str) -> str:
    return f"ib.{verb}"


def heartbeat_key(role: str, actor_id: str) -> str:
    return f"{role}.{actor_id}"


def parse_ops_subject(subject: str) -> tuple[str, str, str] | None:
    """(domain, op_id, event) for an ops.* subject, or None when it is not one."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != "ops":
        return None
    return parts[1], parts[2], parts[3]
