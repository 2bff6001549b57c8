"""The wire vocabulary: every message is a msgspec Struct (tagged, versioned), the subject builders,
the codec and the JSON Schema export. This package is the single source of truth for the wire format."""

from events.codec import decode, decode_command, decode_event, decode_work, encode
from events.messages import *  # noqa: F403
from events.messages import COMMANDS, DOMAINS, EVENTS, TERMINAL_EVENTS

__all__ = ["COMMANDS", "DOMAINS", "EVENTS", "TERMINAL_EVENTS", "decode", "decode_command", "decode_event",
           "decode_work", "encode"]
