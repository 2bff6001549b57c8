"""CheckpointStore against a real nats-server: one latest checkpoint per operation, named from an
operation id only; a resume takes only the checkpoint its run reported (its op id, its digest)."""

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


async def test_a_resume_takes_only_the_checkpoint_its_run_reported(client):
    from events.subjects import new_op_id
    from ktrdr.training.checkpoint_store import Reported, checkpoint_name
    from ktrdr.transport import objects
    from ktrdr.transport.objects import CHECKPOINTS

    ckpts = CheckpointStore(client.js)
    op, other = new_op_id("training"), new_op_id("training")
    assert (await ckpts.resume(op, [])).data is None  # nothing stored: nothing refused either
    reported = await ckpts.put(op, b"epoch 2" * 1000, attempt=1, epoch=2)
    assert reported.epoch == 2 and len(reported.sha256) == 64
    found = await ckpts.resume(op, [reported])
    assert found.data == b"epoch 2" * 1000 and found.refused == "" and found.reported == reported
    pending = await ckpts.resume(op, [Reported(1, "1" * 64), Reported(0, reported.sha256)])  # being stored
    assert pending.data == b"epoch 2" * 1000 and pending.reported == Reported(0, reported.sha256)
    refused = await ckpts.resume(op, [])  # the run reported none
    assert refused.data is None and "reported no checkpoint" in refused.refused
    refused = await ckpts.resume(op, [Reported(1, "0" * 64)])  # another digest than the one it reported
    assert refused.data is None and f"is not the {'0' * 64}" in refused.refused
    # another operation's checkpoint (its record naming that operation) put under this one's name
    theirs = await ckpts.put(other, b"theirs", attempt=1, epoch=5)
    st = await objects.stat(client.js, CHECKPOINTS, checkpoint_name(other))
    assert st is not None
    await objects.put(client.js, CHECKPOINTS, checkpoint_name(op), b"theirs",
                      headers={k: v for k in st.headers if (v := st.header(k)) is not None})
    refused = await ckpts.resume(op, [theirs])
    assert refused.data is None and f"not recorded as {op}'s" in refused.refused and other in refused.refused
