"""JSON Schema of every message, generated from the Structs (never written by hand)."""

from __future__ import annotations

from typing import Any

import msgspec

from events import messages as m


def schema() -> dict[str, Any]:
    types = [m.AnyCommand, m.WorkItem, m.AnyEvent, m.Heartbeat, m.IbBarsRequest, m.IbContractRequest,
             m.IbHeadRequest, m.IbReply]
    schemas, components = msgspec.json.schema_components(types, ref_template="#/$defs/{name}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "KTRDR on NATS wire vocabulary",
        "schema_version": m.SCHEMA_VERSION,
        "messages": {name: s for name, s in zip(["commands", "work", "events", "heartbeat", "ib_bars_request",
                                                 "ib_contract_request", "ib_head_request", "ib_reply"],
                                                schemas, strict=True)},
        "$defs": components,
    }
