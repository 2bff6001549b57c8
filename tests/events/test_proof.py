"""The holder proof's pure parts (events/proof.py): a chain a holder publishes is counted in order once
a signature of its key reaches it; a stranger's event (unsigned, or signed by another key) never is;
a replay defers signatures and verifies about one per batch; the publisher rations its signatures."""

from __future__ import annotations

from events import proof
from events.bounds import CONFIRM_BATCH

SUBJECT = "ops.dummy.dummy-20260101T000000000000-aaaaaa.progress"


def published(signer: proof.Signer, n: int, *, every: float = 0.0001,
              last_forced: bool = True) -> list[tuple[bytes, str]]:
    out = []
    for i in range(n):
        data = f'{{"seq":{i}}}'.encode()
        value, _due = signer.proof("op", SUBJECT, data, i * every, force=last_forced and i == n - 1)
        out.append((data, value))
    return out


def admit_all(chain: proof.Chain, events: list[tuple[bytes, str]], urgent: bool = False) -> tuple[list[int], list[str]]:
    counted, notes = [], []
    for i, (data, value) in enumerate(events):
        got, note = chain.admit(SUBJECT, data, value, i, urgent)
        counted.extend(got)
        if note:
            notes.append(note)
    got, note = chain.confirm()
    counted.extend(got)
    if note:
        notes.append(note)
    return counted, notes


def test_a_chain_counts_in_order_once_signed_and_a_forgery_never():
    key = proof.new_key()
    events = published(proof.Signer(key, 0.001), 50)
    assert sum("." in v for _, v in events) < 10  # rationed: a fast stream is signed now and then
    forged_data = b'{"seq":10**15}'
    forged = (forged_data, proof.header_value(proof.GENESIS, None))  # unsigned, made-up chain
    stranger = proof.Signer(proof.new_key(), 0.001).proof("op", SUBJECT, b'{"seq":-1}', 0.0, force=True)[0]
    mixed = [*events[:20], forged, (b'{"seq":-1}', stranger), *events[20:]]
    for lazy in (False, True):
        chain = proof.Chain(lazy=lazy)
        chain.grant(proof.public_key(key))
        counted, notes = admit_all(chain, mixed)
        assert counted == [i for i in range(len(mixed)) if i not in (20, 21)]
        assert notes  # the forgeries are noted


def test_a_chain_stored_out_of_order_by_resends_counts_every_event_once():
    # A publisher that lost its connection: what nats-py buffered meanwhile (7-12) reaches the stream
    # before what it sends again for want of an ack (1-6): the chain's events arrive out of order.
    key = proof.new_key()
    for every in (0.0001, 0.002):  # rationed signatures (a fast stream), and every event signed
        events = published(proof.Signer(key, 0.001), 40, every=every)
        orders = [[*events[6:12], *events[:6], *events[12:]],  # 1-6 after 7-12
                  [*events[:6], *events[8:12], *events[6:8], *events[12:]]]  # 7-8 after 9-12
        for arrived in orders:
            ids = {data: i for i, (data, _v) in enumerate(events)}
            for lazy in (False, True):
                chain = proof.Chain(lazy=lazy)
                chain.grant(proof.public_key(key))
                counted = []
                for data, value in arrived:
                    counted += chain.admit(SUBJECT, data, value, ids[data], False)[0]
                counted += chain.confirm()[0]
                assert sorted(counted) == list(range(40)), (every, lazy, counted)


def test_no_grant_counts_nothing_and_a_grant_without_key_is_an_older_version():
    events = published(proof.Signer(proof.new_key(), 0.001), 3)
    assert admit_all(proof.Chain(), events)[0] == []
    legacy = proof.Chain()
    legacy.grant("")
    assert admit_all(legacy, events)[0] == [0, 1, 2]


def test_a_replay_verifies_about_one_signature_per_batch(monkeypatch):
    key = proof.new_key()
    events = published(proof.Signer(key, 0.001), 4 * CONFIRM_BATCH, every=0.002)  # slow: every event signed
    calls = []
    real = proof.verify
    monkeypatch.setattr(proof, "verify", lambda *a: calls.append(1) or real(*a))
    chain = proof.Chain(lazy=True)
    chain.grant(proof.public_key(key))
    counted, _ = admit_all(chain, events)
    assert counted == list(range(len(events))) and len(calls) <= 5


def test_the_signer_signs_a_slow_stream_always_and_says_when_a_seal_is_due():
    signer = proof.Signer(proof.new_key(), 0.001, burst=2)
    assert signer.proof("op", SUBJECT, b"a", 0.0)[1] == 0.0
    assert signer.proof("op", SUBJECT, b"b", 0.0)[1] == 0.0
    _value, due = signer.proof("op", SUBJECT, b"c", 0.0)  # the burst is spent
    assert 0 < due <= 0.001 and signer.unsealed("op")
    assert signer.proof("op", SUBJECT, b"d", 0.005)[1] == 0.0 and not signer.unsealed("op")


def test_a_lease_statement_is_bound_to_its_verb_operation_and_key():
    key = proof.new_key()
    pub = proof.public_key(key)
    sig = proof.sign_statement(key, proof.statement("renew", "op-1", "w-1", pub, 1, False))
    assert proof.verify_statement(pub, proof.statement("renew", "op-1", "w-1", pub, 1, False), sig)
    assert not proof.verify_statement(pub, proof.statement("release", "op-1", "w-1", pub, 1, True), sig)
    assert not proof.verify_statement(pub, proof.statement("renew", "op-2", "w-1", pub, 1, False), sig)
    assert not proof.verify_statement(proof.public_key(proof.new_key()),
                                      proof.statement("renew", "op-1", "w-1", pub, 1, False), sig)
