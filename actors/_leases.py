"""Operation leases, the worker's side: at most one attempt of an operation runs in the whole system
at a time, and the orchestrator alone decides which (actors/_orch_leases.py writes LEASES; no worker
role may).

A worker asks for the lease of the operation it took (`lease.<domain>.claim`), with its actor id and
its process's public key, signed by that key; the orchestrator grants it as the next attempt and
publishes the `started` event naming the key, so the fold counts this attempt's events only when
signed by it (events/proof.py). The worker renews the lease on every heartbeat and releases it when
the operation ended (done) or when it hands the work back. A renewal the orchestrator refuses means
the lease is lost: the worker stops without a verdict. An orchestrator that does not answer (it is
restarting) is not a verdict: the request raises, and the worker keeps working and tries again at
the next beat.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from events import proof, subjects
from events.bounds import LEASE_REQUEST_TIMEOUT_S
from events.codec import decode, encode
from events.messages import LeaseReply, LeaseRequest, LeaseVerb
from ktrdr.transport.leases import drop

__all__ = ["Busy", "Held", "LeaseUnavailable", "Leases", "drop"]


@dataclass
class Held:
    op_id: str
    attempt: int


@dataclass
class Busy:
    """Someone else holds it; come back after `retry_in` seconds."""

    holder: str
    retry_in: float


class LeaseUnavailable(Exception):
    """The orchestrator did not answer or could not reach the lease store: no verdict on the lease."""


class Leases:
    def __init__(self, nc: NATS, domain: str, actor_id: str, key: proof.SigningKey, ttl_s: float) -> None:
        self.nc, self.domain, self.actor_id, self.key, self.ttl_s = nc, domain, actor_id, key, ttl_s
        self.public_key = proof.public_key(key)
        self._locks: dict[str, asyncio.Lock] = {}

    async def _ask(self, verb: LeaseVerb, op_id: str, attempt: int = 0, done: bool = False) -> LeaseReply:
        statement = proof.statement(verb, op_id, self.actor_id, self.public_key, attempt, done)
        req = LeaseRequest(op_id=op_id, actor=self.actor_id, key=self.public_key, attempt=attempt, done=done,
                           sig=proof.sign_statement(self.key, statement))
        try:
            msg = await self.nc.request(subjects.lease(self.domain, verb), encode(req),
                                        timeout=LEASE_REQUEST_TIMEOUT_S)
        except Exception as exc:  # no responders (no orchestrator), a timeout, a reconnect
            raise LeaseUnavailable(f"no answer from the orchestrator ({type(exc).__name__})") from None
        reply = decode(msg.data, LeaseReply)
        if not reply.ok and reply.error and not reply.lost and not reply.holder and reply.retry_in:
            raise LeaseUnavailable(reply.error)
        return reply

    async def acquire(self, op_id: str) -> Held | Busy:
        """Ask for the lease of `op_id`: granted (its attempt), or busy (another worker holds it, or
        the operation is not live). LeaseUnavailable when the orchestrator does not answer."""
        reply = await self._ask("claim", op_id)
        if reply.ok:
            return Held(op_id, reply.attempt)
        return Busy(reply.holder or reply.error or "another worker", reply.retry_in or self.ttl_s / 4)

    async def renew(self, held: Held) -> bool:
        """Extend the lease; False when it is no longer ours (taken over or removed). Renewals of one
        lease are serialised. LeaseUnavailable (not a verdict) when the orchestrator does not answer."""
        async with self._locks.setdefault(held.op_id, asyncio.Lock()):
            return (await self._ask("renew", held.op_id, held.attempt)).ok

    def forget(self, op_id: str) -> None:
        self._locks.pop(op_id, None)

    async def release(self, held: Held, *, done: bool) -> None:
        """Done: the lease goes. Not done (handed back): its attempt count stays with no holder, so the
        next worker takes it at once as the next attempt. A lease no longer ours is left alone."""
        async with self._locks.setdefault(held.op_id, asyncio.Lock()):
            await self._ask("release", held.op_id, held.attempt, done)
