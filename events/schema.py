"""JSON Schema of every message, generated from the Structs (never written by hand)."""

from __future__ import annotations

from typing import Any

import msgspec

from events import messages as m

# The message families a client may meet, each as it is decoded on the wire.
FAMILIES: dict[str, Any] = {
    "commands": m.AnyCommand,
    "work": m.WorkItem,
    "events": m.AnyEvent,
    "heartbeat": m.Heartbeat,
    "ib_requests": m.AnyIbRequest,
    "ib_reply": m.IbReply,
    "schedule": m.Schedule,  # sched.def.<name> and the firings on sched.fire.<name>
    "schedule_fired": m.ScheduleFired,  # sched.hist.<name>
}


def schema() -> dict[str, Any]:
    schemas, components = msgspec.json.schema_components(list(FAMILIES.values()), ref_template="#/$defs/{name}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "KTRDR on NATS wire vocabulary",
        "schema_version": m.SCHEMA_VERSION,
        "messages": dict(zip(FAMILIES, schemas, strict=True)),
        "$defs": components,
    }
