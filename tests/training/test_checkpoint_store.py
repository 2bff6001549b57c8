"""CheckpointStore against a real nats-server: one latest checkpoint per operation, named from an
operation id only."""

from __future__ import annotations

import pytest

from ktrdr.errors import ValidationError
from ktrdr.training.checkpoint_store import CheckpointStore


async def test_checkpoints_are_per_operation_and_refuse_anything_but_an_op_id(client):
    from events.subjects import new_op_id

    ckpts = CheckpointStore(client.js)
    op = new_op_id("training")
    assert await ckpts.get(op) is None
    await ckpts.put(op, b"epoch 1")
    await ckpts.put(op, b"epoch 2")
    assert await ckpts.get(op) == b"epoch 2"
    assert await ckpts.delete(op) and await ckpts.get(op) is None
    for bad in ("../x", "training-1", "x/latest"):
        with pytest.raises(ValidationError):
            await ckpts.put(bad, b"x")
