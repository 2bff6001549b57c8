"""The operations index (KV OPS_INDEX) is the active orchestrator's to write: no other key may put a
summary into it, while a client key reads it (what `ops list` and the page do) and may ask the
orchestrator to rebuild it (subjects.REINDEX). Real server with the generated per-role users."""

from __future__ import annotations

from typing import Any

import pytest

from events import subjects
from ktrdr.transport import opsindex
from tests.security.test_refusals import refused

pytestmark = pytest.mark.timeout(60)

FORGED_KEY = f"$KV.{subjects.OPS_INDEX_BUCKET}.live.dummy-20261201T100000000000-abcdef"


@pytest.mark.parametrize("role", ["cli", "observer", "dummy", "job-manager", "trainer", "ib"])
async def test_a_key_other_than_the_orchestrators_cannot_put_into_the_index(as_role: Any, role: str) -> None:
    nc, errors = await as_role(role)
    await refused(errors, nc.jetstream().publish(FORGED_KEY, b"forged"), FORGED_KEY)


async def test_a_client_key_reads_the_index_and_only_the_orchestrator_writes_it(as_role: Any) -> None:
    orch, _ = await as_role("orchestrator")
    await orch.jetstream().publish(f"$KV.{subjects.OPS_INDEX_BUCKET}.h.2026120110", b"")
    cli, errors = await as_role("cli")
    assert "2026120110" in await opsindex.hours(cli.jetstream())  # a batched direct get: allowed
    with pytest.raises(opsindex.IndexMissing):  # no watermark yet: an answer, not a refusal
        await opsindex.read_mark(cli.jetstream())
    await cli.publish(subjects.REINDEX, b"{}")  # allowed: the orchestrator answers it
    await cli.publish(FORGED_KEY, b"forged")  # refused: its error comes after any for the line above
    await errors.wait_for(FORGED_KEY)
    assert not [e for e in errors.permission_errors() if subjects.REINDEX in e]
