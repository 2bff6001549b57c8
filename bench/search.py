"""Free-text search's first page against the history's size (issue 23 item 4): with N finished data
loads in OPS (made over 30 days, each of one of 50 symbols, described as the orchestrator describes a
load) and the operations index caught up, the time of `Client.list_operations(limit=50)` (what
`ops list --text` and the page's GET /ops.json run) for:

- the unfiltered first page (the same-run baseline a search is held to);
- a search through the words (ktrdr.ops.search): one operation's id part (one match), a symbol
  (2% of the history), a description's words ("load <symbol> 1h");
- the scan it replaces, in the same run: the same one-match search with the words unused (as on an
  index built before them), whole history (the CLI's call) and the page's bounded stretch.

Median of 5 (3 for the whole-history scan) with the range, and how many summaries each read. Also the
index's catch-up from empty (the indexer files the words as it goes).

    python -m bench.search [N ...]      (default 1000 10000 100000)
    python -m bench.search filing [N]   (what filing the words costs beside storing the summaries)
"""

from __future__ import annotations

import asyncio
import random
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

from bench._common import ActorProcess, BenchServer, report, wait_alive
from bench.scale import _caught_up
from events import subjects
from events.codec import encode
from events.messages import LoadData, OperationCreated, OperationRejected, OpSummary
from ktrdr.client import Client
from ktrdr.ops.index import Filters
from ktrdr.transport import opsindex
from ktrdr.web.hub import SEARCH_WALK

LEVELS = (1000, 10_000, 100_000)
SPREAD_S = 30 * 86400.0
SYMBOLS = [f"S{i:02d}X" for i in range(50)]
PAGE = 50


async def _store_loads(c: Client, n: int) -> list[str]:
    """n finished data loads (created, rejected) made uniformly over the last 30 days; their ids."""
    made = []
    for start in range(0, n, 1000):
        for _ in range(min(1000, n - start)):
            when = datetime.now(UTC) - timedelta(seconds=random.uniform(60.0, SPREAD_S))
            op_id = f"data-{when:%Y%m%dT%H%M%S%f}-{secrets.token_hex(3)}"
            sym = random.choice(SYMBOLS)
            made.append(op_id)
            await c.js.publish_async(subjects.ops(op_id, "created"), encode(OperationCreated(
                op_id=op_id, actor="orchestrator-bench", domain="data", op_type="data_load",
                description=f"load {sym} 1h (full)", command=LoadData(op_id=op_id, symbol=sym, mode="full"))))
            await c.js.publish_async(subjects.ops(op_id, "rejected"), encode(OperationRejected(
                op_id=op_id, actor="orchestrator-bench", reason="bench history")))
        await c.js.publish_async_completed()
    return made


async def _timed(c: Client, call: Callable[[], Awaitable[object]], runs: int) -> dict[str, Any]:
    walls, rows = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        got = await call()
        walls.append(time.perf_counter() - t0)
        rows = len(got)  # type: ignore[arg-type]
    return {"median_s": round(statistics.median(walls), 4), "min_s": round(min(walls), 4),
            "max_s": round(max(walls), 4), "rows": rows, "read": c.index_read}


async def _level(c: Client, n: int, made: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    made += await _store_loads(c, n - len(made))
    store_s = time.perf_counter() - t0
    catchup_s = await _caught_up(c)
    one = random.choice(made)
    piece, sym = one[-6:], SYMBOLS[7]

    def search(text: str, **kw: Any) -> Callable[[], Awaitable[object]]:
        return lambda: c.list_operations(limit=PAGE, filters=Filters(text=text), **kw)

    row: dict[str, Any] = {"operations": n, "store_s": round(store_s, 1), "index_catchup_s": round(catchup_s, 1)}
    row["first_page"] = await _timed(c, lambda: c.list_operations(limit=PAGE), 5)
    row["words_one_match"] = await _timed(c, search(piece), 5)
    row["words_symbol"] = await _timed(c, search(sym.lower()), 5)
    row["words_description"] = await _timed(c, search(f"load {sym} 1h"), 5)

    async def no_words(_js: object) -> bool:
        return False

    with mock.patch.object(opsindex, "has_words", no_words):  # as an index built before the words
        row["scan_one_match_page"] = await _timed(c, search(piece, max_walk=SEARCH_WALK), 5)
        row["scan_one_match_whole"] = await _timed(c, search(piece), 3)
    assert row["words_one_match"]["rows"] == 1 == row["scan_one_match_whole"]["rows"], row
    return row


async def run(levels: tuple[int, ...]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with BenchServer("search") as srv:
        orch = ActorProcess(srv.settings, "orchestrator")
        try:
            async with Client(srv.settings) as c:
                await wait_alive(c, ["orchestrator"])
                made: list[str] = []
                for n in levels:
                    rows.append(await _level(c, n, made))
                    print(table(rows), flush=True)
        finally:
            orch.stop()
    return {"rows": rows, "page": PAGE, "symbols": len(SYMBOLS),
            "target": "a search's first page well under 1 s at 100,000 operations, without reading the index"}


async def filing_cost(n: int = 5000, rounds: int = 3) -> dict[str, Any]:
    """What filing the words adds to the indexer's writes: the same n summaries (data loads, ended)
    stored as the indexer stores them (IndexWriter.put_all) and their words filed (file_words), each
    into a fresh part of the bucket, `rounds` times, in process; seconds and the ratio, median and range."""
    from ktrdr.transport.opsindex import IndexWriter

    puts, words, keys = [], [], 0
    with BenchServer("search-filing") as srv:
        async with Client(srv.settings) as c:
            kv = await c.js.key_value(subjects.OPS_INDEX_BUCKET)
            for _ in range(rounds):
                summaries = []
                for _i in range(n):
                    when = datetime.now(UTC) - timedelta(seconds=random.uniform(60.0, SPREAD_S))
                    sym = random.choice(SYMBOLS)
                    op_id = f"data-{when:%Y%m%dT%H%M%S%f}-{secrets.token_hex(3)}"
                    summaries.append(OpSummary(op_id=op_id, op_type="data_load", pool="any", status="rejected",
                                               symbols=[sym], description=f"load {sym} 1h (full)", seq=1,
                                               created_at=when))
                writer = IndexWriter(kv, c.js)
                t0 = time.perf_counter()
                await writer.put_all(summaries, without_live={s.op_id for s in summaries})
                puts.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                keys = await writer.file_words(summaries)
                words.append(time.perf_counter() - t0)
    ratios = [w / p for w, p in zip(words, puts, strict=True)]
    return {"summaries": n, "word_keys": keys, "put_all_s": [round(x, 2) for x in puts],
            "file_words_s": [round(x, 2) for x in words],
            "words_over_summaries_median": round(statistics.median(ratios), 3),
            "range": [round(min(ratios), 3), round(max(ratios), 3)]}


def _cell(m: dict[str, Any]) -> str:
    return f"{m['median_s']} s ({m['min_s']}-{m['max_s']}; read {m['read']:,})"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| finished ops | first page (no filter) | words: one match | words: a symbol (2%) "
             "| words: `load SYM 1h` | scan, one match: page's stretch | scan, one match: whole history "
             "| index catch-up |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['operations']:,} | {_cell(r['first_page'])} | {_cell(r['words_one_match'])} "
                     f"| {_cell(r['words_symbol'])} | {_cell(r['words_description'])} "
                     f"| {_cell(r['scan_one_match_page'])} | {_cell(r['scan_one_match_whole'])} "
                     f"| {r['index_catchup_s']} s |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["filing"]:  # python -m bench.search filing [N]
        cost = asyncio.run(filing_cost(int(sys.argv[2]) if sys.argv[2:] else 5000))
        report("search-filing", {"filing": cost})
        sys.exit(0)
    result = asyncio.run(run(tuple(int(a) for a in sys.argv[1:]) or LEVELS))
    print(table(result["rows"]))
    report("search", {"search": result})
