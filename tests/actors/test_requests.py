"""Typed request handlers on subjects outside ib.* (actors/_requests.py), served by a small actor
against a real nats-server: the handler gets its request decoded, its reply is encoded for it, a
malformed request and a failing handler are answered (NATS's service-error headers by default, the
actor's own reply type where it overrides reply_for_error), interim replies reach the caller, a
pooled subject is served in every pool the actor joins, and a mistaken declaration is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from actors._requests import ERROR_CODE, SERVICE_ERROR, SERVICE_ERROR_CODE
from actors.runtime import Actor, Call, handles
from events.codec import decode, encode
from events.messages import IbContractRequest, Message
from ktrdr.client import Client
from ktrdr.config import Settings
from ktrdr.errors import DataError
from tests.conftest import make_settings


class EchoRequest(Message, tag="EchoRequest", kw_only=True):
    text: str
    fail: str = ""  # "data": raise a DataError; "bug": raise a ZeroDivisionError; "none": return None


class EchoReply(Message, tag="EchoReply", kw_only=True):
    text: str = ""
    interim: bool = False
    error: str = ""


class CountRequest(Message, tag="CountRequest", kw_only=True):
    n: int


class EchoActor(Actor):
    role = "echo"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[type] = []

    @handles(EchoRequest, subject="svc.echo", queue="echo")
    async def echo(self, req: EchoRequest) -> EchoReply:
        self.seen.append(type(req))
        if req.fail == "data":
            raise DataError("no such text", hint="send another")
        if req.fail == "bug":
            raise ZeroDivisionError("division by zero")
        if req.fail == "none":
            return None  # type: ignore[return-value]
        return EchoReply(text=req.text.upper())

    @handles(CountRequest, subject=lambda pool: f"svc.count.{pool}")
    async def count(self, req: CountRequest, call: Call) -> EchoReply:
        for i in range(req.n):
            await call.interim(EchoReply(text=str(i), interim=True))
        return EchoReply(text=f"counted {req.n} on {call.subject}")


class TypedErrorsActor(EchoActor):
    """Answers failures in its callers' own reply type."""

    def reply_for_error(self, exc: BaseException, text: str | None) -> EchoReply:
        return EchoReply(error=text or f"{type(exc).__name__}: {exc}")


@pytest.fixture
async def echo_settings(settings: Settings) -> Settings:
    async with Client(settings) as c:  # the streams an actor binds to
        await c.ensure_streams()
    return make_settings(settings.home, settings.nats_url or "", pools=["gpu"])


@pytest.fixture
async def echo(echo_settings: Settings) -> AsyncIterator[EchoActor]:
    actor = EchoActor(echo_settings)
    await actor.start()
    yield actor
    await actor.stop()


async def test_a_handler_outside_ib_gets_its_request_decoded_and_its_reply_encoded(echo, client):
    reply = await client.nc.request("svc.echo", encode(EchoRequest(text="hello")), timeout=10)
    assert decode(reply.data, EchoReply).text == "HELLO"
    assert echo.seen == [EchoRequest]


async def test_a_malformed_request_is_answered_with_service_error_headers(echo, client):
    reply = await client.nc.request("svc.echo", b"{garbage", timeout=10)
    assert reply.data == b""
    assert reply.headers is not None and reply.headers[SERVICE_ERROR_CODE] == "400"
    assert reply.headers[ERROR_CODE] == "validation" and "malformed request on svc.echo" in reply.headers[SERVICE_ERROR]
    assert echo.seen == []  # the handler never saw it
    ok = await client.nc.request("svc.echo", encode(EchoRequest(text="still here")), timeout=10)
    assert decode(ok.data, EchoReply).text == "STILL HERE"


async def test_a_failing_handler_is_answered_with_its_error_code(echo, client):
    reply = await client.nc.request("svc.echo", encode(EchoRequest(text="x", fail="data")), timeout=10)
    assert reply.headers is not None
    assert (reply.headers[SERVICE_ERROR_CODE], reply.headers[ERROR_CODE]) == ("500", "data")
    assert reply.headers[SERVICE_ERROR] == "no such text (send another)"
    reply = await client.nc.request("svc.echo", encode(EchoRequest(text="x", fail="bug")), timeout=10)
    assert reply.headers is not None
    assert (reply.headers[SERVICE_ERROR_CODE], reply.headers[ERROR_CODE]) == ("500", "internal")
    assert "ZeroDivisionError" in reply.headers[SERVICE_ERROR]
    reply = await client.nc.request("svc.echo", encode(EchoRequest(text="x", fail="none")), timeout=10)
    assert reply.headers is not None and reply.headers[ERROR_CODE] == "internal"  # answered, not left waiting
    assert "EchoRequest handler returned NoneType" in reply.headers[SERVICE_ERROR]


async def test_an_actor_that_overrides_reply_for_error_answers_in_its_own_type(echo_settings, client):
    actor = TypedErrorsActor(echo_settings)
    await actor.start()
    try:
        # both actors could be in queue group "echo": this one alone serves here
        reply = await client.nc.request("svc.echo", encode(EchoRequest(text="x", fail="data")), timeout=10)
        assert decode(reply.data, EchoReply).error == "DataError: no such text (send another)"
        reply = await client.nc.request("svc.echo", b"[]", timeout=10)
        assert decode(reply.data, EchoReply).error.startswith("malformed request on svc.echo")
    finally:
        await actor.stop()


async def test_interim_replies_and_a_pooled_subject_in_every_pool_the_actor_joins(echo, client):
    for pool in ("gpu", "any"):
        inbox = client.nc.new_inbox()
        sub = await client.nc.subscribe(inbox)
        await client.nc.publish(f"svc.count.{pool}", encode(CountRequest(n=3)), reply=inbox)
        got = [decode((await sub.next_msg(timeout=10)).data, EchoReply) for _ in range(4)]
        await sub.unsubscribe()
        assert [r.text for r in got] == ["0", "1", "2", f"counted 3 on svc.count.{pool}"]
        assert [r.interim for r in got] == [True, True, True, False]


def test_a_type_with_no_derivable_subject_needs_one() -> None:
    with pytest.raises(TypeError, match="pass subject="):
        handles(EchoRequest)


def test_a_handler_annotated_with_another_request_type_is_refused() -> None:
    async def wrong(self: Any, req: EchoRequest) -> EchoReply:
        return EchoReply()

    with pytest.raises(TypeError, match="whose req is a EchoRequest"):
        handles(IbContractRequest)(wrong)
    with pytest.raises(TypeError, match=r"\(self, req\) or \(self, req, call\)"):
        handles(EchoRequest, subject="svc.echo")(lambda self: None)  # type: ignore[arg-type, return-value]
