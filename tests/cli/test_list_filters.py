"""`ktrdr ops list` filters and pages as a user runs it: a subprocess against a real nats-server."""

from __future__ import annotations

import json

from tests.cli.test_cli import ktrdr
from tests.helpers import wait_terminal


async def test_list_pages_back_with_the_printed_cursor_and_filters_by_status(start_actors, settings, client):
    await start_actors("orchestrator", "dummy")
    made = []
    for _ in range(3):
        rc, out, err = await ktrdr(settings, "dummy", "--iterations", "1", "--interval", "0.01", "--no-wait")
        assert rc == 0, err
        made.append(out.strip())
    for op_id in made:
        await wait_terminal(client, op_id)
    rc, out, err = await ktrdr(settings, "ops", "list", "--json", "--limit", "2", "--status", "completed")
    assert rc == 0, err
    assert [v["op_id"] for v in json.loads(out)] == made[1:]
    cursor = err.split("--before", 1)[1].split()[0]
    rc, out, err = await ktrdr(settings, "ops", "list", "--json", "--limit", "2", "--before", cursor)
    assert [v["op_id"] for v in json.loads(out)] == made[:1] and "--before" not in err
    rc, out, _ = await ktrdr(settings, "ops", "list", "--status", "running")
    assert rc == 0 and "no operations match" in out


async def test_list_with_a_bad_date_exits_2_saying_why(settings):
    rc, _out, err = await ktrdr(settings, "ops", "list", "--since", "yesterday")
    assert rc == 2 and "not a date or time" in err
    rc, _out, err = await ktrdr(settings, "ops", "list", "--status", "done")
    assert rc == 2 and "--status must be one of" in err
