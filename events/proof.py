"""The holder proof, pure: a per-process Ed25519 key, the hash chain of the events one holder
publishes for an operation, and the reader's side that counts an event only once a signature by the
holder's key vouches for it. No NATS code here (the publisher and the readers carry the header).

Why a chain: an Ed25519 verify costs ~80 us here, an event's fold ~3 us, so signing every event would
make a replay of a long operation 25x slower. Each held event carries, in the `Ktrdr-Proof` header,
the 16-byte blake2b of the previous held event of its operation (`prev`) and, now and then, a
signature of its own hash, which is blake2b(prev, body) (the body names the event type and op id
its subject must carry, so it binds the subject too). A signature therefore vouches for
every event before it on the chain: the reader keeps the unconfirmed events by hash (bounded) and,
when a signature verifies against the key of the operation's latest grant (`OperationStarted.key`,
published by the orchestrator alone), applies the chain back to the last confirmed event, in order.
An event nobody's signature reaches (a forgery: its hash is on no genuine chain) never counts.

The publisher signs about one event per SIGN_INTERVAL_S of each operation (a token bucket: a slow
stream has every event signed, a fast one is amortised), always a verdict or an error, and makes
sure a signed event follows an unsigned one once a signature is due again (actors/_publisher.py).
A live reader verifies each signature as it comes (latency);
a replay defers them (`lazy`): one signature verified late vouches for everything before it, so a
replay verifies about one per CONFIRM_BATCH events however densely they were signed.
"""

from __future__ import annotations

import binascii
import bisect
import hashlib
from binascii import unhexlify
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # nacl is imported at the first key made or signature checked: a reader with
    # nothing to verify (`ktrdr ops list` of lifecycle events) starts without it (issue 23, item 5)
    from nacl.signing import SigningKey, VerifyKey

from events.bounds import CONFIRM_BATCH, MAX_UNCONFIRMED, SIGN_BURST

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


def __getattr__(name: str) -> Any:
    """`proof.SigningKey` and `proof.VerifyKey`, nacl's, imported when first asked for."""
    if name in ("SigningKey", "VerifyKey"):
        import nacl.signing

        return getattr(nacl.signing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def new_key() -> SigningKey:
    """A process's key: made at start, never stored (its public half travels in the grant)."""
    from nacl.signing import SigningKey

    return SigningKey.generate()


def public_key(key: SigningKey) -> str:
    """The public key as 64 hex characters (what a grant, a lease and a lease request carry)."""
    return key.verify_key.encode().hex()


def chain_hash(subject: str, prev: bytes, data: bytes) -> bytes:
    """An event's 16-byte hash: the previous hash and its body. (The subject is bound too: a reader
    takes an event only when its body's type and op id are the subject's, events.codec.decode_event_on,
    so hashing the body covers it; `subject` stays in the signature for the day that changes.)"""
    return hashlib.blake2b(prev + data, digest_size=16).digest()


def header_value(prev: bytes, signature: bytes | None) -> str:
    """`<prev hex>` or `<prev hex>.<signature hex>`."""
    return prev.hex() if signature is None else f"{prev.hex()}.{signature.hex()}"


def parse_proof(value: bytes | str) -> tuple[bytes, bytes | None]:
    """(prev, signature or None) of a header value; ValueError (binascii.Error) when it is not one."""
    n = len(value)
    if n == _HASH_HEX:
        return unhexlify(value), None
    if n == _HASH_HEX + 1 + _SIG_HEX:
        return unhexlify(value[:_HASH_HEX]), unhexlify(value[_HASH_HEX + 1:])
    raise ValueError("not a proof header")


_verify_keys: dict[str, VerifyKey | None] = {}


def _verify_key(public_hex: str) -> VerifyKey | None:
    vk = _verify_keys.get(public_hex)
    if vk is None and public_hex not in _verify_keys:
        from nacl.signing import VerifyKey

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
    from nacl.exceptions import BadSignatureError

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
    """A publisher's chains, one per operation: `proof()` gives an event's header value. Signatures
    are rationed per operation like a token bucket: one per `interval_s` on average, with a burst of
    `burst`, so a stream slower than that has every event signed (no reader waits) and a faster one
    is signed about once per `interval_s`; `force` (a verdict, an error, a seal) always signs."""

    def __init__(self, key: SigningKey, interval_s: float, burst: int = SIGN_BURST) -> None:
        self.key, self.interval_s, self.burst = key, interval_s, float(burst)
        self._tips: dict[str, tuple[bytes, float, float, bool]] = {}  # op -> (last hash, tokens, at, signed)

    def proof(self, op_id: str, subject: str, data: bytes, now: float, *, force: bool = False) -> tuple[str, float]:
        """(header value, 0.0 when signed, else the seconds until a signature is due: the publisher
        seals then if nothing signed came, so an unsigned event waits less than `interval_s`)."""
        tip = self._tips.get(op_id)
        if tip is None:
            if len(self._tips) >= _MAX_KEYS:
                self._tips.clear()  # chains of operations long ended; a live one just starts anew
            prev, tokens = GENESIS, self.burst
        else:
            prev, tokens = tip[0], min(self.burst, tip[1] + (now - tip[2]) / self.interval_s)
        h = chain_hash(subject, prev, data)
        if force or tokens >= 1.0:
            self._tips[op_id] = (h, max(tokens - 1.0, 0.0), now, True)
            return header_value(prev, self.key.sign(h).signature), 0.0
        self._tips[op_id] = (h, tokens, now, False)
        return header_value(prev, None), (1.0 - tokens) * self.interval_s

    def unsealed(self, op_id: str) -> bool:
        """Whether the operation's last event went out unsigned (a signed one must follow)."""
        tip = self._tips.get(op_id)
        return tip is not None and not tip[3]

    def forget(self, op_id: str) -> None:
        self._tips.pop(op_id, None)


# ------------------------------------------------------------------------------ the reader's side
_NOTHING: tuple[Sequence[Any], str | None] = ((), None)


class Chain:
    """One operation's held events as a reader sees them, under the key of its latest grant.

    `admit` returns (the events to count now, in chain order; a note when one is refused). `lazy`:
    defer signatures of events that are not `urgent` until CONFIRM_BATCH are waiting (a replay),
    then `confirm()` (also called at the end of a read) verifies the newest and applies its chain.
    Unconfirmed events are kept in arrival order (hash, prev, event): a confirmation walks back from
    the signed one by hash, taking each event whose hash is the `prev` the chain expects next,
    wherever it sits among them. The stream's order need not be the chain's: a publisher that lost
    its connection sends again what had no ack after what nats-py buffered meanwhile (its reconnect
    flushes the buffer before the reconnected callback runs), so a holder's events 1-6 can be stored
    after its 7-9. A walk that stops at a `prev` neither genesis nor confirmed has a gap: that hash
    is `wanted`, the event carrying it counts when it comes (a confirmed successor vouches for it),
    and while a gap is open the events the walk did not reach wait instead of being called stale."""

    __slots__ = ("confirmed", "key", "lazy", "legacy", "pending", "signed", "wanted")

    def __init__(self, *, lazy: bool = False) -> None:
        self.key: str | None = None
        self.legacy = False  # a grant stored before the proof existed: its events count as they come
        self.lazy = lazy
        self.pending: list[tuple[bytes, bytes, Any]] = []
        self.signed: list[tuple[int, bytes]] = []  # deferred signatures: (index in pending, signature)
        self.confirmed: dict[bytes, None] = {}  # hashes confirmed lately (bounded): a walk's normal end
        self.wanted: dict[bytes, None] = {}  # prevs of confirmed events not seen yet: a gap

    def grant(self, key: str) -> Sequence[Any]:
        """A new grant (an `OperationStarted`): what the previous holder's deferred signatures vouch
        for is returned first (to be counted before the grant), then only `key` counts."""
        out = self.confirm()[0] if self.signed else ()
        self.key, self.legacy = key or None, not key
        self.pending = []
        self.signed = []
        self.confirmed = {}
        self.wanted = {}
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
        except (ValueError, UnicodeDecodeError, binascii.Error):
            return (), "its proof header is malformed"
        pending = self.pending
        if len(pending) >= MAX_UNCONFIRMED:
            self._evict()
        h = hashlib.blake2b(prev + data, digest_size=16).digest()  # chain_hash, inlined
        pending.append((h, prev, item))
        if signature is not None:
            self.signed.append((len(pending) - 1, signature))
            if not self.lazy or urgent:
                return self.confirm()
        if self.wanted and h in self.wanted:  # a confirmed event names it: it counts, with what it reaches
            del self.wanted[h]
            return self._take(len(pending) - 1)[0], None
        if not self.signed or len(pending) < CONFIRM_BATCH:
            return _NOTHING
        return self.confirm()  # lazy: a batch is waiting behind a deferred signature

    def confirm(self) -> tuple[Sequence[Any], str | None]:
        """Verify the newest deferred signature (a bad one is dropped and the next newest tried) and
        return its chain back to the last confirmed event; events older than it that its chain does
        not reach are dropped (nobody's genuine chain holds them), unless a gap is open."""
        note: str | None = None
        key, pending = self.key, self.pending
        while self.signed:
            i, signature = self.signed.pop()
            if key is not None and verify(key, pending[i][0], signature):
                break
            note = "its signature is not the holder's"
        else:
            return (), note
        self.signed = []  # older ones are on this chain, forged, or wait behind a gap (`wanted`)
        out, gone = self._take(i)
        if not self.wanted:  # no gap: what came before i and is on no chain from here is nobody's
            stale = sum(1 for k in range(i) if k not in gone)
            if stale:
                self.pending = [p for k, p in enumerate(pending) if k > i and k not in gone]
                note = f"{stale} event(s) on no chain the holder signed"
        return out, note

    def _take(self, i: int) -> tuple[list[Any], set[int] | range]:
        """Pending event i (vouched for) and the chain back from it, in chain order, taken out of
        pending; with the indices (in pending as it was) they had."""
        pending = self.pending
        confirmed = self.confirmed
        if len(confirmed) >= MAX_UNCONFIRMED:
            confirmed.clear()
        confirmed[pending[i][0]] = None  # a walk ends at the head of an earlier one (or at genesis)
        # The stream's order (all but always): the events up to i are the chain back from it, in order.
        expected = pending[i][0]
        for j in range(i, -1, -1):
            h, prev, _item = pending[j]
            if h != expected:
                break
            expected = prev
        else:
            if expected == GENESIS or expected in confirmed:
                out = [item for _h, _prev, item in pending[:i + 1]]
                del pending[:i + 1]
                self.signed = [(k - i - 1, sig) for k, sig in self.signed if k > i]
                return out, range(i + 1)
        index = {h: j for j, (h, _prev, _item) in enumerate(pending)}
        taken: list[int] = []
        gone: set[int] = set()
        k: int | None = i
        prev = GENESIS
        while k is not None and k not in gone:  # (a cycle cannot be built with blake2b; never loop)
            taken.append(k)
            gone.add(k)
            prev = pending[k][1]
            k = index.get(prev)
        if prev != GENESIS and prev not in confirmed:
            if len(self.wanted) >= MAX_UNCONFIRMED:
                self.wanted.clear()
            self.wanted[prev] = None  # a gap: the event with this hash counts when it comes
        out = [pending[k][2] for k in reversed(taken)]
        self.pending = [p for k, p in enumerate(pending) if k not in gone]
        if self.signed:
            order = sorted(gone)
            self.signed = [(k - bisect.bisect_left(order, k), sig) for k, sig in self.signed if k not in gone]
        return out, gone

    def _evict(self) -> None:
        """Full (a flood of events no signature reaches): forget the older half of the unconfirmed."""
        half = len(self.pending) // 2
        del self.pending[:half]
        self.signed = [(i - half, sig) for i, sig in self.signed if i >= half]
