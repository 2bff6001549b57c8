"""The CHECKPOINTS bucket as a store of a training operation's latest epoch checkpoint: one object
`<op_id>/latest`, readable by whichever host resumes the operation. The bytes are what
ktrdr.training.checkpoint writes; this module only keeps them (the training domain's NATS adapter,
with no torch in it: the orchestrator removes a checkpoint when the operation ends)."""

from __future__ import annotations

from nats.js import JetStreamContext

from events import subjects
from ktrdr.errors import ValidationError
from ktrdr.transport import objects
from ktrdr.transport.objects import CHECKPOINTS, Stored

MAX_CHECKPOINT_BYTES = 4 << 30


def checkpoint_name(op_id: str) -> str:
    """`<op_id>/latest`, from a valid operation id only."""
    if not subjects.is_op_id(op_id):
        raise ValidationError(f"invalid operation id {str(op_id)[:80]!r}")
    return f"{op_id}/latest"


class CheckpointStore:
    """A training operation's latest epoch checkpoint, readable by whichever host resumes it."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def put(self, op_id: str, data: bytes) -> Stored:
        return await objects.put(self.js, CHECKPOINTS, checkpoint_name(op_id), data)

    async def get(self, op_id: str) -> bytes | None:
        found = await objects.get(self.js, CHECKPOINTS, checkpoint_name(op_id), max_bytes=MAX_CHECKPOINT_BYTES)
        return bytes(found[0]) if found else None

    async def delete(self, op_id: str) -> bool:
        return await objects.delete(self.js, CHECKPOINTS, checkpoint_name(op_id))
