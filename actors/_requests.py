"""Typed request/reply handlers: the runtime decodes the request (a malformed one is answered with a
typed error, never dropped in silence), serves each request in its own task, lets the handler send
interim replies, and turns an exception into a typed error reply through the actor's hook."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg

from events import subjects
from events.codec import DecodeError, decode, encode
from events.messages import Message

if TYPE_CHECKING:
    from actors._actor import Actor


class Call:
    """One request in flight: its raw message and a way to send interim replies before the answer."""

    def __init__(self, actor: Actor, msg: Msg) -> None:
        self.actor, self.msg = actor, msg

    async def interim(self, reply: Message) -> None:
        if self.msg.reply and self.actor.nc is not None:
            with contextlib.suppress(Exception):
                await self.actor.nc.publish(self.msg.reply, encode(reply))

    answer = interim  # the final reply goes out the same way


@dataclass(frozen=True)
class RequestHandler:
    request_type: type[Message]
    queue: str | None

    def subject(self, pool: str = subjects.DEFAULT_POOL) -> str:
        return subjects.ib(self.request_type, pool)  # type: ignore[arg-type]

    async def serve(self, actor: Any, fn: Callable[..., Awaitable[Message]], call: Call) -> None:
        try:
            req = decode(call.msg.data, self.request_type)
        except DecodeError as exc:
            await call.answer(actor.reply_for_error(exc, f"malformed request on {call.msg.subject}: {exc}"))
            return
        try:
            reply = await fn(req, call)
        except Exception as exc:
            reply = actor.reply_for_error(exc, None)
        await call.answer(reply)


def request_handlers(actor: Any) -> list[tuple[RequestHandler, Callable[..., Awaitable[Message]]]]:
    """Every method of the actor's class declared with @handles, bound to the actor."""
    out = []
    for name, member in inspect.getmembers(type(actor)):
        spec = getattr(member, "_ktrdr_handles", None)
        if isinstance(spec, RequestHandler):
            out.append((spec, getattr(actor, name)))
    return out
