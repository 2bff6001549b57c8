"""The roles a process connects as, named once: the actors (their ids start with `<role>-`, their
presence keys are `<role>.<actor id>`), the CLI and the read-only observer. Credentials, permissions,
presence and the "who created this operation" check all use these names.
"""

from __future__ import annotations

from typing import Literal, get_args

Role = Literal["orchestrator", "ib", "dummy", "job-manager", "trainer", "backtester", "cli", "observer"]
ActorRole = Literal["orchestrator", "ib", "dummy", "job-manager", "trainer", "backtester"]

ORCHESTRATOR: ActorRole = "orchestrator"
IB: ActorRole = "ib"
DUMMY: ActorRole = "dummy"
JOB_MANAGER: ActorRole = "job-manager"
TRAINER: ActorRole = "trainer"
BACKTESTER: ActorRole = "backtester"
CLI: Role = "cli"
OBSERVER: Role = "observer"

# In start order: the orchestrator first (it provisions the streams and buckets the others bind to),
# then the services before the workers that call them.
ACTOR_ROLES: tuple[ActorRole, ...] = get_args(ActorRole)
ROLES: tuple[Role, ...] = (CLI, OBSERVER, *ACTOR_ROLES)



def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return role


def inbox_prefix(role: str) -> str:
    """The inbox prefix of `role`: it may subscribe only below it (events/permissions.py)."""
    return f"_INBOX_{check_role(role)}"

def actor_id_prefix(role: str) -> str:
    """What every id of an actor of `role` starts with (`orchestrator-<host>-<pid>-<hex>`)."""
    return f"{role}-"


def is_actor_of(actor_id: str, role: str) -> bool:
    """Whether `actor_id` names an actor of `role` (e.g. the orchestrator that created an operation)."""
    return isinstance(actor_id, str) and actor_id.startswith(actor_id_prefix(role))
