"""JSON codec for the wire: one encoder, typed decoders built once. Validation happens at decode.

Every decoder is bounded: a payload nested deeper than msgspec's recursion guard (a hostile
`[[[[...]]]]`) or with bytes that are not UTF-8 where msgspec reads a tag raises DecodeError like any
other malformed payload, never RecursionError or UnicodeDecodeError, so a consumer can always answer
it with an error event or terminate the message.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from events.messages import AnyCommand, AnyEvent, AnyIbRequest, CancelOperation, Heartbeat, IbReply, WorkItem

DecodeError = msgspec.DecodeError  # raised for malformed or invalid payloads (ValidationError is a subclass)
T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
_loose = msgspec.json.Decoder()


def encode(msg: Any) -> bytes:
    return _encoder.encode(msg)


def decode(data: bytes, type: type[T]) -> T:
    """Decode `data` as `type`; DecodeError for anything malformed, however it is malformed."""
    dec = _decoders.get(type)
    if dec is None:
        dec = _decoders[type] = msgspec.json.Decoder(type)
    try:
        return dec.decode(data)
    except RecursionError:
        raise DecodeError("payload nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise DecodeError(f"payload is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def decode_command(data: bytes) -> AnyCommand:  # type: ignore[valid-type]
    return decode(data, AnyCommand)


def decode_event(data: bytes) -> AnyEvent:  # type: ignore[valid-type]
    return decode(data, AnyEvent)


def decode_work(data: bytes) -> WorkItem:
    return decode(data, WorkItem)


def decode_cancel(data: bytes) -> CancelOperation:
    return decode(data, CancelOperation)


def decode_heartbeat(data: bytes) -> Heartbeat:
    return decode(data, Heartbeat)


def decode_ib_request(data: bytes) -> AnyIbRequest:  # type: ignore[valid-type]
    return decode(data, AnyIbRequest)


def decode_ib_reply(data: bytes) -> IbReply:
    return decode(data, IbReply)


def sniff_op_id(data: bytes) -> str | None:
    """Best effort: the op_id of a payload that failed to decode, so the error can be reported on it."""
    try:
        obj = _loose.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None
    if isinstance(obj, dict) and isinstance(obj.get("op_id"), str):
        return obj["op_id"]
    return None
