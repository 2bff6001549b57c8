"""The JSON Schema is generated from the Structs: every message type is in it, and a real message
validates against the structure it describes."""

from __future__ import annotations

import json
import subprocess
import sys

from events.messages import COMMANDS, EVENTS, IB_REQUESTS, Heartbeat, IbReply, WorkItem
from events.schema import schema


def test_schema_names_every_message_type():
    s = schema()
    defs = set(s["$defs"])
    for t in (*COMMANDS, *EVENTS, *IB_REQUESTS, Heartbeat, IbReply, WorkItem):
        assert t.__name__ in defs, t.__name__
    assert s["schema_version"] >= 2


def test_schema_tags_match_the_wire():
    s = schema()
    load = s["$defs"]["LoadData"]
    assert load["properties"]["type"]["enum"] == ["LoadData"]
    assert "symbol" in load["required"]


def test_cli_prints_the_same_schema():
    out = subprocess.run([sys.executable, "-m", "ktrdr", "events", "schema"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert json.loads(out) == json.loads(json.dumps(schema()))
