"""The holder proof, pure: a per-process Ed25519 key, the hash chain of the events one holder
publishes for an operation, and the reader's side that counts an event only once a signature by the
holder's key vouches for it. No NATS code here (the publisher and the readers carry the header).

Why a chain: an Ed25519 verify costs ~80 us here, an event's fold ~3 us, so signing every event would
make a replay of a long operation 25x slower. Each held event carries, in the `Ktrdr-Proof` header,
the 16-byte blake2b of the previous held event of its operation (`prev`) and, now and then, a
signature of its own hash, which is blake2b(subject, prev, body). A signature therefore vouches for
every event before it on the chain: the reader keeps the unconfirmed events by hash (bounded) and,
when a signature verifies against the key of the operation's latest grant (`OperationStarted.key`,
published by the orchestrator alone), applies the chain back to the last confirmed event, in order.
An event nobody's signature reaches (a forgery: its hash is on no genuine chain) never counts.

The publisher signs an event when SIGN_INTERVAL_S passed since its last signature for that
operation, always a verdict or an error, and makes sure a signed event follows an unsigned one
within SEAL_S (actors/_publisher.py). A live reader verifies each signature as it comes (latency);
a replay defers them (`lazy`): one signature verified late vouches for everything before it, so a
replay verifies about one per CONFIRM_BATCH events however densely they were signed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from events.bounds import CONFIRM_BATCH, MAX_UNCONFIRMED

HEADER = "Ktrdr-Proof"
HEADER_BYTES = HEADER.encode()
GENESIS = bytes(16)  # the `prev` of an operation's first held event from one publisher
_HASH_HEX = 32
_SIG_HEX = 128
_MAX_KEYS = 4096

__all__ = [
    "GENESIS",
    "HEADER",
    "Chain",
    "Signer",
    "SigningKey",
    "chain_hash",
    "header_value",
    "new_key",
    "parse_proof",
    "public_key",
    "sign_statement",
    "statement",
    "verify_statement",
]


def new_key() -> SigningKey:
    """A process's key: made at start, never stored (its public half travels in the grant)."""
    return SigningKey.generate()


def public_key(key: SigningKey) -> str:
    """The public key as 64 hex characters (what a grant, a lease and a lease request carry)."""
    return key.verify_key.encode().hex()


def chain_hash(subject: str, prev: bytes, data: bytes) -> bytes:
    """An event's 16-byte hash: its subject, the previous hash and its body."""
    return hashlib.blake2b(b"".join((subject.encode(), b"\n", prev, data)), digest_size=16).digest()


def header_value(prev: bytes, signature: bytes | None) -> str:
    """`<prev hex>` or `<prev hex>.<signature hex>`."""
    return prev.hex() if signature is None else f"{prev.hex()}.{signature.hex()}"


def parse_proof(value: bytes | str) -> tuple[bytes, bytes | None]:
    """(prev, signature or None) of a header value; ValueError when it is not one."""
    text = value.decode("ascii") if isinstance(value, bytes) else value
    if len(text) == _HASH_HEX:
        return bytes.fromhex(text), None
    if len(text) == _HASH_HEX + 1 + _SIG_HEX and text[_HASH_HEX] == ".":
        return bytes.fromhex(text[:_HASH_HEX]), bytes.fromhex(text[_HASH_HEX + 1:])
    raise ValueError("not a proof header")


_verify_keys: dict[str, VerifyKey | None] = {}


def _verify_key(public_hex: str) -> VerifyKey | None:
    vk = _verify_keys.get(public_hex)
    if vk is None and public_hex not in _verify_keys:
        try:
            vk = VerifyKey(bytes.fromhex(public_hex))
        except (ValueError, TypeError, Exception):  # nacl raises its own error types for a bad length
            vk = None
        if len(_verify_keys) >= _MAX_KEYS:
            _verify_keys.clear()
        _verify_keys[public_hex] = vk
    return vk


def verify(public_hex: str, message: bytes, signature: bytes) -> bool:
    vk = _verify_key(public_hex)
    if vk is None:
        return False
    try:
        vk.verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


# ------------------------------------------------------------------------------ lease requests
def statement(verb: str, op_id: str, actor: str, key: str, attempt: int, done: bool) -> bytes:
    """What a lease request's signature covers: which verb, on which operation, by whom, with which key."""
    return f"ktrdr-lease\n{verb}\n{op_id}\n{actor}\n{key}\n{attempt}\n{int(done)}".encode()


def sign_statement(key: SigningKey, message: bytes) -> str:
    return key.sign(message).signature.hex()


def verify_statement(public_hex: str, message: bytes, signature_hex: str) -> bool:
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        return False
    return verify(public_hex, message, signature)


# ------------------------------------------------------------------------------ the publisher's side
class Signer:
    """A publisher's chains, one per operation: `proof()` gives an event's header value and says
    whether it was signed (a signature every SIGN_INTERVAL_S at most, and whenever `force`)."""

    def __init__(self, key: SigningKey, interval_s: float) -> None:
        self.key, self.interval_s = key, interval_s
        self._tips: dict[str, tuple[bytes, float, bool]] = {}  # op -> (last hash, last signed at, it was signed)

    def proof(self, op_id: str, subject: str, data: bytes, now: float, *, force: bool = False) -> tuple[str, bool]:
        tip = self._tips.get(op_id)
        prev = tip[0] if tip is not None else GENESIS
        h = chain_hash(subject, prev, data)
        if force or tip is None or now - tip[1] >= self.interval_s:
            if tip is None and len(self._tips) >= _MAX_KEYS:
                self._tips.clear()  # chains of operations long ended; a live one just starts anew
            self._tips[op_id] = (h, now, True)
            return header_value(prev, self.key.sign(h).signature), True
        self._tips[op_id] = (h, tip[1], False)
        return header_value(prev, None), False

    def unsealed(self, op_id: str) -> bool:
        """Whether the operation's last event went out unsigned (a signed one must follow)."""
        tip = self._tips.get(op_id)
        return tip is not None and not tip[2]

    def forget(self, op_id: str) -> None:
        self._tips.pop(op_id, None)


# ------------------------------------------------------------------------------ the reader's side
_NOTHING: tuple[Sequence[Any], str | None] = ((), None)


class Chain:
    """One operation's held events as a reader sees them, under the key of its latest grant.

    `admit` returns (the events to count now, in chain order; a note when one is refused). `lazy`:
    defer signatures of events that are not `urgent` until CONFIRM_BATCH are waiting (a replay),
    then `confirm()` (also called at the end of a read) verifies the newest and applies its chain."""

    __slots__ = ("key", "lazy", "legacy", "n", "pending", "signed")

    def __init__(self, *, lazy: bool = False) -> None:
        self.key: str | None = None
        self.legacy = False  # a grant stored before the proof existed: its events count as they come
        self.lazy = lazy
        self.pending: dict[bytes, tuple[bytes, Any, int]] = {}  # hash -> (prev, event, arrival number)
        self.signed: list[tuple[bytes, bytes, int]] = []  # deferred signatures, oldest first
        self.n = 0

    def grant(self, key: str) -> Sequence[Any]:
        """A new grant (an `OperationStarted`): what the previous holder's deferred signatures vouch
        for is returned first (to be counted before the grant), then only `key` counts."""
        out = self.confirm()[0] if self.signed else ()
        self.key, self.legacy = key or None, not key
        self.pending.clear()
        self.signed.clear()
        return out

    def admit(self, subject: str, data: bytes, proof: bytes | str | None, item: Any,
              urgent: bool) -> tuple[Sequence[Any], str | None]:
        if self.legacy:
            return (item,), None
        if self.key is None:
            return (), "nobody holds the operation"
        if proof is None:
            return (), "it carries no proof"
        try:
            prev, signature = parse_proof(proof)
        except (ValueError, UnicodeDecodeError):
            return (), "its proof header is malformed"
        h = chain_hash(subject, prev, data)
        if len(self.pending) >= MAX_UNCONFIRMED:
            self._evict()
        self.n += 1
        self.pending[h] = (prev, item, self.n)
        if signature is not None:
            self.signed.append((h, signature, self.n))
            if not self.lazy or urgent:
                return self.confirm()
        if not self.signed or len(self.pending) < CONFIRM_BATCH:
            return _NOTHING
        return self.confirm()  # lazy: a batch is waiting behind a deferred signature

    def confirm(self) -> tuple[Sequence[Any], str | None]:
        """Verify the newest deferred signature (a bad one is dropped and the next newest tried) and
        return its chain back to the last confirmed event; events older than it that its chain does
        not reach are dropped: nobody's genuine chain holds them."""
        note: str | None = None
        key = self.key
        while self.signed:
            h, signature, n = self.signed.pop()
            if key is not None and verify(key, h, signature):
                break
            self.pending.pop(h, None)
            note = "its signature is not the holder's"
        else:
            return (), note
        self.signed.clear()  # older ones are on this chain, or forged: either way not needed
        out: list[Any] = []
        p = h
        while (entry := self.pending.pop(p, None)) is not None:
            out.append(entry[1])
            p = entry[0]
        out.reverse()
        stale = [k for k, (_prev, _item, m) in self.pending.items() if m < n]
        for k in stale:
            del self.pending[k]
        if stale:
            note = f"{len(stale)} event(s) on no chain the holder signed"
        return out, note

    def _evict(self) -> None:
        """Full (a flood of events no signature reaches): forget the oldest unconfirmed one."""
        del self.pending[next(iter(self.pending))]
