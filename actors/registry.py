"""Role name -> actor class, imported lazily so a process only loads what it runs."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from events import roles
from events.roles import ACTOR_ROLES
from ktrdr.config import Settings

if TYPE_CHECKING:
    from actors.runtime import Actor

_CLASSES: dict[str, str] = {
    roles.IB: "actors.ib:IbActor",
    roles.DUMMY: "actors.dummy:DummyWorker",
    roles.JOB_MANAGER: "actors.job_manager:JobManager",
    roles.TRAINER: "actors.trainer:Trainer",
    roles.BACKTESTER: "actors.backtester:Backtester",
    roles.ORCHESTRATOR: "actors.orchestrator:Orchestrator",
}
ROLES: dict[str, str] = {role: _CLASSES[role] for role in ACTOR_ROLES}


def build(role: str, settings: Settings, *, url: str | list[str] | None = None) -> Actor:
    module, _, cls = ROLES[role].partition(":")
    actor_cls = getattr(importlib.import_module(module), cls)
    return actor_cls(settings, url=url)
