"""Typed request/reply handlers for any request subject.

`@handles(RequestType)` (the subject derived from the type: `ib.<verb>` for an IB request) or
`@handles(RequestType, subject="svc.echo")` / `subject=lambda pool: ...` on an actor method
`async def name(self, req: RequestType[, call: Call]) -> Reply`. The runtime subscribes, decodes the
request into its type (a malformed one is answered, never dropped in silence), serves each request
in its own task, encodes the reply, and turns an exception into the reply the actor's
`reply_for_error` hook gives (by default NATS's service-error headers on an empty body). A handler
that takes `call` may send interim replies before its answer; it never sees the raw message. One
declared with `keepalive_s=` sends a keepalive (an empty message with the `Ktrdr-Working: <actor id>`
header) as it takes each request and then every `keepalive_s` until it answers, so that its caller
can tell a request that takes long from a responder that stopped (paused, hung, cut off).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from nats.aio.msg import Msg

from events import subjects
from events.codec import DecodeError, decode, encode
from events.messages import IbRequest, Message
from ktrdr import tracing
from ktrdr.errors import KtrdrError, ValidationError

if TYPE_CHECKING:
    from actors._actor import Actor

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
Subject = str | Callable[[str], str]  # one subject, or the subject for each pool the actor joins

# The NATS services convention (the `micro` API's headers) for a reply that is an error, plus our
# typed code: a caller branches on Ktrdr-Error-Code without parsing the description.
SERVICE_ERROR = "Nats-Service-Error"
SERVICE_ERROR_CODE = "Nats-Service-Error-Code"
ERROR_CODE = "Ktrdr-Error-Code"


class Call:
    """One request in flight, as its handler sees it: where the caller waits (`reply_to`) and a way
    to send interim replies before the answer."""

    def __init__(self, actor: Actor, msg: Msg) -> None:
        self._actor, self._msg = actor, msg

    @property
    def reply_to(self) -> str:
        """The caller's reply inbox ("" for a request sent without one)."""
        return self._msg.reply

    @property
    def subject(self) -> str:
        return self._msg.subject

    async def interim(self, reply: Message) -> None:
        """Send `reply` to the caller now (the final answer is what the handler returns)."""
        await self._send(encode(reply))

    async def keepalive(self) -> None:
        """Tell the caller this actor is still serving its request."""
        await self._send(b"", {subjects.WORKING_HEADER: self._actor.id})

    async def _send(self, data: bytes, headers: dict[str, str] | None = None) -> None:
        if self._msg.reply and self._actor.nc is not None:
            with contextlib.suppress(Exception):
                await self._actor.nc.publish(self._msg.reply, data, headers=headers)

    async def answer(self, reply: Message | None, error: ErrorReply | None = None) -> None:
        if reply is not None:
            await self._send(encode(reply))
        elif error is not None:
            await self._send(b"", error.headers())


@dataclass(frozen=True)
class ErrorReply:
    """The default answer to a request that failed: NATS's service-error headers, our code."""

    status: int  # 400: the request was wrong; 500: serving it failed
    code: str  # the KtrdrError code ("validation" for a malformed request, "internal" otherwise)
    description: str

    @staticmethod
    def of(exc: BaseException, text: str | None) -> ErrorReply:
        if text is not None:
            return ErrorReply(400, "validation", text[:2000])
        if isinstance(exc, KtrdrError):
            return ErrorReply(400 if isinstance(exc, ValidationError) else 500, exc.code, str(exc)[:2000])
        return ErrorReply(500, "internal", f"internal error: {type(exc).__name__}: {exc}"[:2000])

    def headers(self) -> dict[str, str]:
        # a header value is one line
        return {SERVICE_ERROR: " ".join(self.description.split()), SERVICE_ERROR_CODE: str(self.status),
                ERROR_CODE: self.code}


def _derived_subject(request_type: type[Message]) -> Subject:
    if issubclass(request_type, IbRequest) and request_type.verb:
        return lambda pool: subjects.ib(request_type, pool)
    raise TypeError(f"@handles({request_type.__name__}): no subject derives from this type; pass subject=")


@dataclass(frozen=True)
class RequestHandler:
    request_type: type[Message]
    subject_of: Subject
    queue: str | None
    takes_call: bool
    keepalive_s: float | None = None

    def subjects_for(self, pools: list[str]) -> list[str]:
        """The subjects it is served on: its one subject, or one per pool the actor joins."""
        if isinstance(self.subject_of, str):
            return [self.subject_of]
        return list(dict.fromkeys(self.subject_of(pool) for pool in pools))

    async def serve(self, actor: Actor, fn: Callable[..., Awaitable[Message]], call: Call) -> str | None:
        """Answer one request; what went wrong when it was answered with an error (None: it was served)."""
        try:
            req = decode(call._msg.data, self.request_type)
        except DecodeError as exc:
            text = f"malformed request on {call.subject}: {exc}"
            await call.answer(actor.reply_for_error(exc, text), ErrorReply.of(exc, text))
            return text
        # A request that came with a traceparent (an IB request made in an operation's span) is served
        # in a child span of it; others (leases, discovery) make no span.
        parent = tracing.of_headers(call._msg.headers)
        with tracing.span(f"serve {call.subject}", getattr(req, "op_id", None) or None, parent=parent,
                          attrs={tracing.ROLE: actor.role}) if parent is not None else contextlib.nullcontext():
            return await self._answer(actor, fn, call, req)

    async def _answer(self, actor: Actor, fn: Callable[..., Awaitable[Message]], call: Call,
                      req: Message) -> str | None:
        alive = asyncio.ensure_future(_keep_alive(call, self.keepalive_s)) if self.keepalive_s else None
        try:
            try:
                reply = await (fn(req, call) if self.takes_call else fn(req))
            finally:
                if alive is not None:
                    alive.cancel()
            if not isinstance(reply, msgspec.Struct):  # the caller would wait for an answer never sent
                raise TypeError(f"{self.request_type.__name__} handler returned {type(reply).__name__}, not a reply")
        except Exception as exc:
            error = ErrorReply.of(exc, None)
            await call.answer(actor.reply_for_error(exc, None), error)
            return error.description
        await call.answer(reply)
        return None


async def _keep_alive(call: Call, every_s: float) -> None:
    """A keepalive now (the caller learns who took its request) and every `every_s` after."""
    while True:
        await call.keepalive()
        await asyncio.sleep(every_s)


def _check_annotation(fn: Callable[..., Any], request_type: type[Message], param: str) -> None:
    """A handler annotated with another request type than it is declared for is a mistake: refuse it
    where it is declared (a name the module cannot resolve yet is left to the type checker)."""
    try:
        hint = typing.get_type_hints(fn).get(param)
    except Exception:
        return
    if isinstance(hint, type) and not issubclass(request_type, hint):
        raise TypeError(f"@handles({request_type.__name__}) on {fn.__qualname__}, whose {param} is a {hint.__name__}")


def handles(request_type: type[Message], *, subject: Subject | None = None,
            queue: str | None = None, keepalive_s: float | None = None) -> Callable[[F], F]:
    """Declare an actor method the handler of `request_type` requests on `subject` (derived from the
    type when it can be: `ib.<verb>[.<pool>]`), in queue group `queue` (none: every actor gets each),
    sending a keepalive every `keepalive_s` while it serves one (none: no keepalives)."""
    subject_of = subject if subject is not None else _derived_subject(request_type)

    def deco(fn: F) -> F:
        params = list(inspect.signature(fn).parameters)
        if len(params) not in (2, 3):
            raise TypeError(f"{fn.__qualname__}: a request handler is (self, req) or (self, req, call)")
        _check_annotation(fn, request_type, params[1])
        fn._ktrdr_handles = RequestHandler(request_type, subject_of, queue, len(params) == 3,
                                                      keepalive_s)  # type: ignore[attr-defined]
        return fn

    return deco


def request_handlers(actor: Any) -> list[tuple[RequestHandler, Callable[..., Awaitable[Message]]]]:
    """Every method of the actor's class declared with @handles, bound to the actor."""
    out = []
    for name, member in inspect.getmembers(type(actor)):
        spec = getattr(member, "_ktrdr_handles", None)
        if isinstance(spec, RequestHandler):
            out.append((spec, getattr(actor, name)))
    return out
