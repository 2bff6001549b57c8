"""The CHECKPOINTS bucket as a store of a training operation's latest epoch checkpoint: one object
`<op_id>/latest`, readable by whichever host resumes the operation. The bytes are what
ktrdr.training.checkpoint writes; this module only keeps them (the training domain's NATS adapter,
with no torch in it: the orchestrator removes a checkpoint when the operation ends).

Every trainer shares one key, so any of them can rewrite any checkpoint (issue 18, F5: a resumed run
took zeroed weights under genuine-looking metadata). A checkpoint therefore records the run that wrote
it (header `Ktrdr-Checkpoint`: op id, attempt, epoch; the meta record's digest of its bytes), the
holder reports the digest of each checkpoint in its own progress (`TrainingContext.checkpoint_sha256`
stored, `checkpoint_pending_sha256` being stored), and `resume` hands out only a checkpoint of this
operation whose bytes have one of those digests. The anchor is only as strong as the fold's holder rule: once the
holder signs its progress, a same-role key cannot forge it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from nats.js import JetStreamContext

from events import subjects
from ktrdr.errors import DataError, ValidationError
from ktrdr.transport import objects
from ktrdr.transport.objects import CHECKPOINTS, Stored, sha256_hex

MAX_CHECKPOINT_BYTES = 4 << 30
CHECKPOINT_HEADER = "Ktrdr-Checkpoint"


def checkpoint_name(op_id: str) -> str:
    """`<op_id>/latest`, from a valid operation id only."""
    if not subjects.is_op_id(op_id):
        raise ValidationError(f"invalid operation id {str(op_id)[:80]!r}")
    return f"{op_id}/latest"


@dataclass(frozen=True)
class Reported:
    """A checkpoint as its run reported it: its epoch (0: not known, one being stored) and the hex
    SHA-256 of its bytes."""

    epoch: int
    sha256: str


@dataclass(frozen=True)
class Resume:
    """What `CheckpointStore.resume` found: the bytes to resume from (None: start from scratch), the
    checkpoint they are, and why a stored checkpoint was refused ("" when none was)."""

    data: bytes | None
    reported: Reported | None = None
    refused: str = ""


class CheckpointStore:
    """A training operation's latest epoch checkpoint, readable by whichever host resumes it."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def put(self, op_id: str, data: bytes, *, attempt: int = 0, epoch: int = 0) -> Reported:
        record = json.dumps({"op_id": op_id, "attempt": attempt, "epoch": epoch})
        st = await objects.put(self.js, CHECKPOINTS, checkpoint_name(op_id), data,
                               headers={CHECKPOINT_HEADER: record})
        return Reported(epoch=epoch, sha256=sha256_hex(st.digest))

    async def stat(self, op_id: str) -> Stored | None:
        """The stored checkpoint's meta record (None when there is none)."""
        st = await objects.stat(self.js, CHECKPOINTS, checkpoint_name(op_id))
        return None if st is None or st.deleted else st

    async def get(self, op_id: str) -> bytes | None:
        """The stored bytes, unchecked against their run (tests, tools); a resume uses `resume`."""
        found = await objects.get(self.js, CHECKPOINTS, checkpoint_name(op_id), max_bytes=MAX_CHECKPOINT_BYTES)
        return bytes(found[0]) if found else None

    async def resume(self, op_id: str, reported: Sequence[Reported]) -> Resume:
        """The checkpoint to resume `op_id` from: only one recorded as this operation's whose bytes have
        a digest the run `reported` (its holder's newest progress: the stored and the pending one).
        Anything else is refused with the reason, and the run starts from scratch."""
        st = await self.stat(op_id)
        if st is None:
            return Resume(None)
        if (problem := _problem(st, op_id, reported)) is not None:
            return Resume(None, refused=problem)
        try:
            data = await objects.fetch(self.js, st, max_bytes=MAX_CHECKPOINT_BYTES)
        except DataError as exc:  # the bytes are not the ones its meta record (and the run) names
            return Resume(None, refused=f"checkpoint of {op_id} unreadable: {exc.message}")
        assert data is not None
        digest = sha256_hex(st.digest)
        return Resume(bytes(data), next(r for r in reported if r.sha256 == digest))

    async def delete(self, op_id: str) -> bool:
        return await objects.delete(self.js, CHECKPOINTS, checkpoint_name(op_id))


def _problem(st: Stored, op_id: str, reported: Sequence[Reported]) -> str | None:
    """Why the stored checkpoint `st` is not the one `op_id`'s run reported, or None when it is."""
    try:
        record = json.loads(st.header(CHECKPOINT_HEADER) or "")
    except ValueError:
        record = None
    if not isinstance(record, dict) or record.get("op_id") != op_id:
        named = record.get("op_id") if isinstance(record, dict) else None
        return f"checkpoint refused: it is not recorded as {op_id}'s (it names {str(named)[:80]!r})"
    digest = sha256_hex(st.digest)
    if not reported:
        return f"checkpoint refused: {op_id}'s run reported no checkpoint (stored one: sha256 {digest})"
    if all(digest != r.sha256 for r in reported):
        return (f"checkpoint refused: its sha256 {digest} is not the {' or '.join(r.sha256 for r in reported)} "
                f"the run reported")
    return None
