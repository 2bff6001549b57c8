"""JSON codec for the wire: one encoder, typed decoders built once. Validation happens at decode.

A payload that is well-formed but out of bounds (a field's msgspec `Meta` constraint, an enum or a
Literal) raises `InvalidField`, a DecodeError whose text is one line naming the field path and the
bound in words (`iterations: must be between 1 and 10000, got 0`), quoting at most a short prefix of
the bad value.

Every decoder is bounded: a payload nested deeper than msgspec's recursion guard (a hostile
`[[[[...]]]]`) or with bytes that are not UTF-8 where msgspec reads a tag raises DecodeError like any
other malformed payload, never RecursionError or UnicodeDecodeError, so a consumer can always answer
it with an error event or terminate the message.

An event read off NATS is decoded with `decode_event_on(subject, data)`: it means only what the
subject proves (NATS checked the publisher's permission on the subject, never on the body), so its
domain, op id and event name come from the subject, and a body that says otherwise raises `Misfiled`.
`decode_event(data)` is for a body whose subject nobody knows (a file, a test): never for a message.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from msgspec import inspect

from events.messages import (
    DOMAINS,
    EVENTS,
    AnyCommand,
    AnyEvent,
    AnyIbRequest,
    Heartbeat,
    IbReply,
    OperationCreated,
    WorkItem,
)
from events.subjects import parse_ops_subject

DecodeError = msgspec.DecodeError  # raised for malformed or invalid payloads (ValidationError is a subclass)


class InvalidField(msgspec.ValidationError):
    """A field out of its bounds: `field` is its path (`symbols[3]`, `command.iterations`)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
_loose = msgspec.json.Decoder()


def encode(msg: Any) -> bytes:
    return _encoder.encode(msg)


def decode(data: bytes, type: type[T]) -> T:
    """Decode `data` as `type`; DecodeError for anything malformed, however it is malformed."""
    return _decode(data, type)


def _decode(data: bytes, type: Any) -> Any:
    """decode() for any type msgspec decodes, a union alias included."""
    dec = _decoders.get(type)
    if dec is None:
        dec = _decoders[type] = msgspec.json.Decoder(type)
    try:
        return dec.decode(data)
    except msgspec.ValidationError as exc:
        raise explain(exc, type, data) from None
    except RecursionError:
        raise DecodeError("payload nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise DecodeError(f"payload is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def decode_command(data: bytes) -> AnyCommand:
    return _decode(data, AnyCommand)


def decode_event(data: bytes) -> AnyEvent:
    return _decode(data, AnyEvent)


class Misfiled(msgspec.DecodeError):
    """A message on an ops subject whose body disagrees with the subject (another event type, another
    operation, another domain) or a subject that names no operation's event: nobody's event."""


_EVENT_FOR_NAME: dict[str, type] = {e.name: e for e in EVENTS}
_DOMAIN_PREFIX: dict[str, str] = {d: f"{d}-" for d in DOMAINS}
# What each subject seen lately proves (expected event type, op id, domain), or why it proves nothing:
# a reader meets the same few subjects again and again, and parsing one costs as much as the decode.
_SUBJECTS: dict[str, tuple[type, str, str] | str] = {}
_SUBJECTS_MAX = 4096


def _learn(subject: str) -> tuple[type, str, str] | str:
    parsed = parse_ops_subject(subject)
    info: tuple[type, str, str] | str
    if parsed is None:
        info = f"{subject[:120]} is not an operation's event subject"
    else:
        domain, op_id, name = parsed
        expected, prefix = _EVENT_FOR_NAME.get(name), _DOMAIN_PREFIX.get(domain)
        if expected is None or prefix is None or not op_id.startswith(prefix):
            info = f"{subject[:120]} names no event of a {domain[:20]!r} operation"
        else:
            info = (expected, op_id, domain)
    if len(_SUBJECTS) >= _SUBJECTS_MAX:
        _SUBJECTS.clear()
    _SUBJECTS[subject] = info
    return info


def decode_event_on(subject: str, data: bytes) -> AnyEvent:
    """The event a message on `subject` carries, when its body agrees with the subject: the body's type
    is the one the subject's last token names, its op_id is the subject's, and the subject's domain is
    that op id's (and a creation's). Misfiled when they disagree, DecodeError when it is not an event.

    It runs for every event of every replay (a million for a long training), so what a subject proves
    is parsed once (a bounded cache) and the checks are identity and string compares."""
    info = _SUBJECTS.get(subject)
    if info is None:
        info = _learn(subject)
    if isinstance(info, str):
        raise Misfiled(info)
    expected, op_id, domain = info
    ev: AnyEvent = _decode(data, AnyEvent)
    kind = type(ev)
    if kind is not expected:
        raise Misfiled(f"a {kind.__name__} published on {subject[:120]}, which carries only {expected.__name__}")
    if ev.op_id != op_id:
        raise Misfiled(f"an event of {short(ev.op_id)} published on {subject[:120]}")
    if kind is OperationCreated and isinstance(ev, OperationCreated) and (
            ev.domain != domain or ev.command.domain != domain):
        raise Misfiled(f"a creation of a {short(ev.domain)} operation published on {subject[:120]}")
    return ev


def decode_work(data: bytes) -> WorkItem:
    return decode(data, WorkItem)


def decode_heartbeat(data: bytes) -> Heartbeat:
    return decode(data, Heartbeat)


def decode_ib_request(data: bytes) -> AnyIbRequest:
    return _decode(data, AnyIbRequest)


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


def check(msg: msgspec.Struct) -> None:
    """Check a message made in Python against its bounds, as its receiver will decode it (a Struct's
    constructor checks no constraints); InvalidField for the first field out of bounds."""
    decode(encode(msg), type(msg))


def short(value: object, limit: int = 40) -> str:
    """repr of a value, cut to `limit` characters: bad input is quoted, not echoed whole."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# ------------------------------------------------------------------------------ explaining a bound
_AT = re.compile(r"^(?P<what>.*) - at `\$(?P<path>[^`]*)`$", re.S)
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")


def explain(exc: msgspec.ValidationError, type_: Any, data: bytes) -> msgspec.ValidationError:
    """`exc` as an InvalidField naming the field and its bound, or `exc` itself where there is no
    field to name (a wrong top-level shape, an unknown tag)."""
    m = _AT.match(str(exc))
    if not m or not m["path"]:
        return exc
    try:
        value: Any = _loose.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        value = None
    info: Any = _type_info(type_)
    field: list[str] = []
    for step in _STEP.finditer(m["path"]):
        name, index = step.group(1), step.group(2)
        info = _narrow(info, value)
        if name is not None:
            field.append(("." if field else "") + name)
            fields = {f.encode_name: f.type for f in getattr(info, "fields", ())}
            info = fields.get(name)
            value = value.get(name) if isinstance(value, dict) else None
        else:
            field.append(f"[{index}]" if index is not None else "[...]")
            info = getattr(info, "item_type", None) or getattr(info, "value_type", None)
            value = value[int(index)] if index is not None and isinstance(value, list) \
                and int(index) < len(value) else None
    return InvalidField("".join(field), _problem(_narrow(info, value), value, m["what"]))


_TYPE_INFO: dict[Any, Any] = {}


def _type_info(type_: Any) -> Any:
    """msgspec's description of `type_`, made once per type: building it evaluates every annotation
    of every struct the type reaches (16 ms for AnyCommand here), and a malformed command must cost
    the intake a decode, not that (the fuzz test's 2,500 hostile commands took 27 s of the
    orchestrator's event loop, 26 of them here)."""
    info = _TYPE_INFO.get(type_)
    if info is None:
        info = _TYPE_INFO[type_] = inspect.type_info(type_)
    return info


def _narrow(info: Any, value: Any) -> Any:
    """The member of a union (a tagged Struct by its tag, else the one that is not None) `value` is."""
    while isinstance(info, inspect.UnionType):
        members = [t for t in info.types if not isinstance(t, inspect.NoneType)]
        tagged = [t for t in members if isinstance(t, inspect.StructType) and t.tag_field is not None
                  and isinstance(value, dict) and value.get(t.tag_field) == t.tag]
        info = (tagged or members or [None])[0]
    return info


def _problem(info: Any, value: Any, what: str) -> str:
    description = ""
    if isinstance(info, inspect.Metadata):
        description = (info.extra_json_schema or {}).get("description", "")
        info = info.type
    ge, le = getattr(info, "ge", None), getattr(info, "le", None)
    if isinstance(info, inspect.IntType | inspect.FloatType) and ge is not None and le is not None \
            and "Expected `" in what and ("<=" in what or ">=" in what):
        return f"must be between {ge:g} and {le:g}, got {short(value)}"
    if isinstance(info, inspect.StrType) and info.pattern is not None and "regex" in what:
        return f"{short(value)} is not {description or f'matching {info.pattern}'}"
    if isinstance(info, inspect.StrType) and "length <=" in what:
        return f"longer than {info.max_length} characters"
    if isinstance(info, inspect.ListType) and "length <=" in what:
        count = f", got {len(value)}" if isinstance(value, list) else ""
        return f"at most {info.max_length} items{count}"
    if isinstance(info, inspect.EnumType):
        return f"{short(value)} is not one of {', '.join(str(e.value) for e in info.cls)}"
    if isinstance(info, inspect.LiteralType):
        return f"{short(value)} is not one of {', '.join(map(str, info.values))}"
    return what
