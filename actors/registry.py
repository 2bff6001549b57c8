"""Role name -> actor class, imported lazily so a process only loads what it runs."""

from __future__ import annotations

import importlib

from actors.runtime import Actor
from ktrdr.config import Settings

# Start order: services before the workers that call them, the orchestrator last.
ROLES: dict[str, str] = {
    "ib": "actors.ib:IbActor",
    "dummy": "actors.dummy:DummyWorker",
    "job-manager": "actors.job_manager:JobManager",
    "trainer": "actors.trainer:Trainer",
    "orchestrator": "actors.orchestrator:Orchestrator",
}


def build(role: str, settings: Settings, *, url: str | None = None) -> Actor:
    module, _, cls = ROLES[role].partition(":")
    actor_cls = getattr(importlib.import_module(module), cls)
    return actor_cls(settings, url=url)
