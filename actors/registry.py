"""Role name -> actor class, imported lazily so a process only loads what it runs."""

from __future__ import annotations

import importlib

from actors.runtime import Actor
from ktrdr.config import Settings

ROLES: dict[str, str] = {
    "orchestrator": "actors.orchestrator:Orchestrator",
    "dummy": "actors.dummy:DummyWorker",
    "job-manager": "actors.job_manager:JobManager",
    "ib": "actors.ib:IbActor",
    "trainer": "actors.trainer:Trainer",
}


def build(role: str, settings: Settings, *, url: str | None = None) -> Actor:
    module, _, cls = ROLES[role].partition(":")
    actor_cls = getattr(importlib.import_module(module), cls)
    return actor_cls(settings, url=url)
