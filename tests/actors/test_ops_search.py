"""Free-text search through the words the indexer files per operation (ktrdr.ops.search,
actors/_orch_index.py): a search reads its words' keys and then only its candidates' summaries, finds
exactly the operations the text matches, newest first, and pages on with the cursor; a word most
operations have is read hour by hour; the start of an op id reads only its hours. Real nats-server,
real orchestrator; the history is stored as an orchestrator stores rejected operations."""

from __future__ import annotations

from events import subjects
from events.codec import encode
from events.messages import LoadData, OperationCreated, OperationRejected, OpSummary
from ktrdr.client import Client
from ktrdr.ops.index import Filters, parse_when
from ktrdr.transport import opsindex
from tests.actors.test_ops_index import caught_up, until

HOURS = ["2026110110", "2026110111", "2026110112"]


async def store_loads(c: Client, hours: list[str], per_hour: int, symbol_of=lambda n: "MSFT") -> dict[str, str]:
    """Finished data loads made in the given hours (created, rejected), the n-th (from 0, oldest
    first) of `symbol_of(n)`, described as the orchestrator describes a load. op id -> symbol."""
    made: dict[str, str] = {}
    n = 0
    for hour in hours:
        for i in range(per_hour):
            op_id = f"data-{hour[:8]}T{hour[8:]}{i % 60:02d}{i // 60 % 60:02d}{i:06d}-{n:06x}"
            sym = symbol_of(n)
            made[op_id] = sym
            await c.js.publish_async(subjects.ops(op_id, "created"), encode(OperationCreated(
                op_id=op_id, actor="orchestrator-test", domain="data", op_type="data_load",
                description=f"load {sym} 1h (full)", command=LoadData(op_id=op_id, symbol=sym, mode="full"))))
            await c.js.publish_async(subjects.ops(op_id, "rejected"), encode(OperationRejected(
                op_id=op_id, actor="orchestrator-test", reason="history")))
            n += 1
    await c.js.publish_async_completed()
    return dict(sorted(made.items(), key=lambda kv: subjects.created_at_of(kv[0])))


def _ids(rows) -> list[str]:
    return [v.op_id for v in rows]


async def test_a_search_finds_exactly_the_matching_operations_newest_first_and_pages_on(start_actors, client):
    await start_actors("orchestrator")
    made = await store_loads(client, HOURS, per_hour=30, symbol_of=lambda n: "AAPL" if n % 7 == 0 else "MSFT")
    await until(lambda: caught_up(client))
    aapl = [o for o, s in made.items() if s == "AAPL"]
    assert len(aapl) == 13 and await opsindex.has_words(client.js)

    rows = await client.list_operations(limit=50, filters=Filters(text="aapl"))
    assert _ids(rows) == aapl and client.next_before is None and client.index_note is None
    assert client.index_read == len(aapl)  # only the matches' summaries, not the 90 of the history
    # Paging back from the newest with each page's cursor: together the pages are the matches.
    pages, before = [], None
    while True:
        rows = await client.list_operations(limit=4, filters=Filters(text="AAPL"), before=before)
        pages.append(_ids(rows))
        assert client.index_read <= len(aapl) and client.searched_to is None
        if client.next_before is None:
            break
        before = client.next_before
    assert pages == [aapl[9:], aapl[5:9], aapl[1:5], aapl[:1]]
    # The list's own text filter still decides: a description's words in order, any case; words
    # no operation has together; the other filters with it.
    assert _ids(await client.list_operations(filters=Filters(text="Load AAPL 1h"))) == aapl
    assert await client.list_operations(filters=Filters(text="aapl msft")) == []
    assert await client.list_operations(filters=Filters(text="1h load")) == []  # not in that order
    newest_hour = Filters(text="aapl", since=parse_when("2026-11-01T12:00"))
    assert _ids(await client.list_operations(filters=newest_hour)) == [o for o in aapl if "T12" in o]
    assert await client.list_operations(filters=Filters(text="aapl", status="completed")) == []
    # The id's random part is a word of it.
    one = list(made)[40]
    assert _ids(await client.list_operations(filters=Filters(text=one[-6:]))) == [one]
    assert client.index_read == 1


async def test_a_schedules_firing_is_found_by_the_schedules_name(start_actors, client):
    await start_actors("orchestrator")
    made = await store_loads(client, HOURS[:1], per_hour=5)
    fired = "data-20261101T120000000000-00ffff"
    await client.js.publish(subjects.ops(fired, "created"), encode(OperationCreated(
        op_id=fired, actor="orchestrator-test", domain="data", op_type="data_load", schedule_name="nightly-bars",
        description="load MSFT 1h (tail)", command=LoadData(op_id=fired, symbol="MSFT", mode="tail"))))
    await until(lambda: caught_up(client))
    assert len(made) == 5
    assert _ids(await client.list_operations(filters=Filters(text="nightly"))) == [fired]
    assert _ids(await client.list_operations(filters=Filters(text="Nightly-Bars"))) == [fired]


async def test_a_word_most_operations_have_is_read_hour_by_hour_newest_first(start_actors, client):
    await start_actors("orchestrator")
    per_hour = opsindex.MULTI_LAST_MAX // 2 + 40  # more MSFT loads than one read of a word answers
    made = await store_loads(client, ["2026110110", "2026110111"], per_hour=per_hour)
    await until(lambda: caught_up(client))
    assert await opsindex.ops_of_word(client.js, "msft") is None  # too many for one read
    rows = await client.list_operations(limit=5, filters=Filters(text="msft"))
    assert _ids(rows) == list(made)[-5:] and client.next_before == list(made)[-5]
    assert client.index_read < 200  # the newest hour's candidates, newest first, until the page was full
    rows = await client.list_operations(limit=5, filters=Filters(text="load MSFT 1h"))  # every word common
    assert _ids(rows) == list(made)[-5:] and client.index_read < 200


async def test_the_start_of_an_op_id_reads_only_the_hours_it_can_be_in(start_actors, client):
    await start_actors("orchestrator")
    made = list(await store_loads(client, HOURS, per_hour=5))
    await until(lambda: caught_up(client))
    rows = await client.list_operations(filters=Filters(text="DATA-20261101T11"))
    assert _ids(rows) == made[5:10] and client.index_read == 5  # one hour read of three
    rows = await client.list_operations(filters=Filters(text=made[12]))  # a whole id
    assert _ids(rows) == [made[12]]
    assert await client.list_operations(filters=Filters(text="training-2026")) == []


def test_words_an_operation_is_found_by_are_bounded_and_normalised():
    from events.bounds import MAX_SEARCH_WORD, MAX_SEARCH_WORDS
    from ktrdr.ops.search import check_text, words_of

    s = OpSummary(op_id="training-20261101T100000000000-3f9a1c", symbols=["BRK.B", "EUR/USD"],
                  strategy="MLP_rsi_aapl", pool="gpu", schedule="nightly-es",
                  description="train " + " ".join(f"w{i}" for i in range(40)) + " " + "x" * 50)
    got = words_of(s)
    assert got[:9] == ["3f9a1c", "brk", "eur", "usd", "mlp", "rsi", "aapl", "gpu", "nightly"]
    assert len(got) == MAX_SEARCH_WORDS and all(2 <= len(w) <= MAX_SEARCH_WORD and w.isalnum() for w in got)
    for bad in ("", " ", "a*b", "x" * 65, 'say "hi"', "a>b", "tab\there"):
        try:
            check_text(bad)
        except ValueError as exc:
            assert "\n" not in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")
    assert check_text("  BRK.B train (full) ") == "BRK.B train (full)"
