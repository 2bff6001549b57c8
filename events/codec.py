"""JSON codec for the wire: one encoder, typed decoders built once. Validation happens at decode."""

from __future__ import annotations

from typing import Any

import msgspec

from events.messages import (
    AnyCommand,
    AnyEvent,
    Heartbeat,
    IbBarsRequest,
    IbContractRequest,
    IbHeadRequest,
    IbReply,
    WorkItem,
)

_encoder = msgspec.json.Encoder()
_command_decoder = msgspec.json.Decoder(AnyCommand)
_event_decoder = msgspec.json.Decoder(AnyEvent)
_work_decoder = msgspec.json.Decoder(WorkItem)
_heartbeat_decoder = msgspec.json.Decoder(Heartbeat)
_ib_request_decoder = msgspec.json.Decoder(IbBarsRequest | IbContractRequest | IbHeadRequest)
_ib_reply_decoder = msgspec.json.Decoder(IbReply)
_loose = msgspec.json.Decoder()

DecodeError = msgspec.DecodeError  # raised for malformed or invalid payloads (ValidationError is a subclass)


def encode(msg: Any) -> bytes:
    return _encoder.encode(msg)


def decode_command(data: bytes) -> AnyCommand:
    return _command_decoder.decode(data)


def decode_event(data: bytes) -> AnyEvent:
    return _event_decoder.decode(data)


def decode_work(data: bytes) -> WorkItem:
    return _work_decoder.decode(data)


def decode_heartbeat(data: bytes) -> Heartbeat:
    return _heartbeat_decoder.decode(data)


def decode_ib_request(data: bytes) -> IbBarsRequest | IbContractRequest | IbHeadRequest:
    return _ib_request_decoder.decode(data)


def decode_ib_reply(data: bytes) -> IbReply:
    return _ib_reply_decoder.decode(data)


def sniff_op_id(data: bytes) -> str | None:
    """Best effort: the op_id of a payload that failed to decode, so the error can be reported on it."""
    try:
        obj = _loose.decode(data)
    except msgspec.DecodeError:
        return None
    if isinstance(obj, dict) and isinstance(obj.get("op_id"), str):
        return obj["op_id"]
    return None
