"""What the priority pull costs a worker to take its next item, against queue depth, beside the plain
single-subject pull measured in the same run (`KTRDR_BENCH_RESEARCH_PARTS=pull python -m bench research`).

Three pools of the dummy domain on one server, each with the consumers a worker makes
(actors/_work.py: explicit ack, max_ack_pending 1,000):
- `plain`: the worker's take before priorities, and the orchestrator's command loop today
  (actors/_pull.py pull_loop): one durable consumer, `fetch(1)` with the item already queued.
- `all`: the three levels (high, normal, low) each holding `depth` items; one take is what
  priority_pull_loop does once a slot is free (`_scan` over `take_order`): one no_wait pull of the
  high level, which answers with an item.
- `low_only`: only the low level holds `depth` items; a take is a no_wait pull of the empty high
  level, one of the empty normal level, and one of low: the empty levels' cost.
A take is timed from asking to the message in hand; it is then acked and (untimed) one item is
published to the same level in its place, so the depth stays what it says. Depths 10, 100, 1,000 a
level (KTRDR_BENCH_PULL_DEPTHS); at each depth KTRDR_BENCH_PULL_ROUNDS rounds (default 5) of
KTRDR_BENCH_PULL_TAKES takes (default 100) of each configuration, the order rotated each round.
Figures: the median and p90 of every take, the range of the rounds' medians, and each configuration's
median over plain's. `mark_waiting_ms`: what the `all` loop reads after a take, off the path that
starts the item (consumer info of the two lower levels, _mark_waiting). `idle`: an idle worker
(nothing queued) long-polling, one item published: publish -> the message in hand, plain's one long
poll against the priority loop's three (_idle_poll) and one level's alone (KTRDR_BENCH_PULL_IDLE items
each, default 100, the three in turn).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js import api as js_api

from actors._pull import Level, _idle_poll, _mark_waiting, _scan, pull_next, take_order
from bench._common import pct
from events import subjects
from events.subjects import PRIORITIES

DOMAIN = "dummy"
PAYLOAD = b"x" * 600  # about a work item's size (a StartTraining command with its strategy is larger)
AGING_S = 60.0


def _config(pool: str, prio: str) -> js_api.ConsumerConfig:
    name = subjects.work_consumer(DOMAIN, pool, prio)
    return js_api.ConsumerConfig(name=name, durable_name=name, filter_subject=subjects.work(DOMAIN, pool, prio),
                                 ack_policy=js_api.AckPolicy.EXPLICIT, ack_wait=30.0, max_ack_pending=1000)


async def _levels(js: Any, pool: str) -> list[Level]:
    out = []
    for rank, prio in enumerate(PRIORITIES):
        cfg = _config(pool, prio)
        await js.add_consumer(subjects.STREAM_WORK, cfg)
        out.append(Level(prio, rank, subjects.STREAM_WORK, cfg.durable_name or ""))
    return out


async def _fill(js: Any, subject: str, n: int) -> None:
    for i in range(0, n, 100):
        await asyncio.gather(*(js.publish(subject, PAYLOAD) for _ in range(min(100, n - i))))


async def _pending(js: Any, level_or_consumer: Level | str) -> int:
    name = level_or_consumer.consumer if isinstance(level_or_consumer, Level) else level_or_consumer
    info = await js.consumer_info(subjects.STREAM_WORK, name)
    return int(info.num_pending or 0)


def _stats(xs: list[float], rounds: list[float]) -> dict[str, Any]:
    return {"median_ms": round(statistics.median(xs), 3), "p90_ms": round(pct(xs, 90), 3),
            "max_ms": round(max(xs), 3), "round_medians_ms": [round(min(rounds), 3), round(max(rounds), 3)]}


async def figures(c: Any) -> dict[str, Any]:
    depths = tuple(int(x) for x in os.environ.get("KTRDR_BENCH_PULL_DEPTHS", "10,100,1000").split(","))
    rounds = int(os.environ.get("KTRDR_BENCH_PULL_ROUNDS", "5"))
    takes = int(os.environ.get("KTRDR_BENCH_PULL_TAKES", "100"))
    idle_n = int(os.environ.get("KTRDR_BENCH_PULL_IDLE", "100"))
    nc, js = c.nc, c.js
    plain_cfg = _config("plain", "normal")
    await js.add_consumer(subjects.STREAM_WORK, plain_cfg)
    psub = await js.pull_subscribe_bind(durable=plain_cfg.durable_name, stream=subjects.STREAM_WORK)
    levels_all, levels_low = await _levels(js, "all"), await _levels(js, "low_only")
    plain_subject = subjects.work(DOMAIN, "plain", "normal")

    async def take_plain() -> tuple[float, str]:
        t0 = time.perf_counter()
        msg = (await psub.fetch(1, timeout=5))[0]
        took = time.perf_counter() - t0
        await msg.ack()
        return took, msg.subject

    def take_levels(levels: list[Level]) -> Any:
        async def take() -> tuple[float, str]:
            t0 = time.perf_counter()
            taken = await _scan(nc, take_order(levels, time.monotonic(), AGING_S))
            took = time.perf_counter() - t0
            if taken is None:
                raise RuntimeError(f"nothing to take from {levels[0].consumer}'s pool")
            await taken[1].ack()
            return took, taken[1].subject
        return take

    configs = {"plain": take_plain, "all": take_levels(levels_all), "low_only": take_levels(levels_low)}
    out: dict[str, Any] = {"takes_per_round": takes, "rounds": rounds, "payload_bytes": len(PAYLOAD)}
    have = 0
    for depth in depths:
        await _fill(js, plain_subject, depth - have)
        for lv in levels_all:
            await _fill(js, subjects.work(DOMAIN, "all", lv.priority), depth - have)
        await _fill(js, subjects.work(DOMAIN, "low_only", "low"), depth - have)
        have = depth
        times: dict[str, list[float]] = {k: [] for k in configs}
        medians: dict[str, list[float]] = {k: [] for k in configs}
        names = list(configs)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                xs = []
                for _ in range(takes):
                    took, subject = await configs[name]()
                    await js.publish(subject, PAYLOAD)  # its place in the queue, untimed
                    xs.append(took * 1000)
                times[name] += xs
                medians[name].append(statistics.median(xs))
        mark = []
        for _ in range(takes):
            t0 = time.perf_counter()
            await _mark_waiting(js, levels_all[1:], time.monotonic())
            mark.append((time.perf_counter() - t0) * 1000)
        queued = {"plain": await _pending(js, plain_cfg.durable_name or ""),
                  "all": [await _pending(js, lv) for lv in levels_all],
                  "low_only": [await _pending(js, lv) for lv in levels_low]}
        row: dict[str, Any] = {name: _stats(times[name], medians[name]) for name in configs}
        base = row["plain"]["median_ms"]
        for name in ("all", "low_only"):
            row[name]["vs_plain"] = round(row[name]["median_ms"] / base, 3)
        row["mark_waiting_ms"] = {"median": round(statistics.median(mark), 3), "p90": round(pct(mark, 90), 3)}
        row["queued_at_end"] = queued
        out[f"depth_{depth}"] = row
        print(f"  depth {depth:>5} a level: take plain {row['plain']['median_ms']:.3f} ms, "
              f"all levels {row['all']['median_ms']:.3f} ms (x{row['all']['vs_plain']:.2f}), "
              f"only low {row['low_only']['median_ms']:.3f} ms (x{row['low_only']['vs_plain']:.2f}); "
              f"queued at the end {queued}", flush=True)
    # Drain everything, then the idle case: one item published to a worker waiting on an empty queue.
    for levels in (levels_all, levels_low):
        for lv in levels:
            while await _pending(js, lv):
                taken = await _scan(nc, [lv])
                if taken is not None:
                    await taken[1].ack()
    while await _pending(js, plain_cfg.durable_name or ""):
        await (await psub.fetch(1, timeout=5))[0].ack()
    out["idle"] = await _idle(c, psub, plain_subject, levels_all, idle_n)
    return out


async def _idle(c: Any, psub: Any, plain_subject: str, levels: list[Level], n: int) -> dict[str, Any]:
    """publish -> message in hand on an idle worker (the item goes to the normal level, the path a
    normal item takes): plain's one long poll (fetch), the priority loop's three at once (_idle_poll:
    the first answer taken, the other two withdrawn before it returns), and one of them alone
    (pull_next with an expiry: what the three cost over one)."""
    normal = subjects.work(DOMAIN, "all", "normal")
    polls: dict[str, tuple[Callable[[], Awaitable[Any]], str]] = {
        "plain": (lambda: psub.fetch(1, timeout=10), plain_subject),
        "priority": (lambda: _idle_poll(c.nc, levels, 10.0), normal),
        "one_level": (lambda: pull_next(c.nc, levels[1], 10.0), normal)}
    lat: dict[str, list[float]] = {k: [] for k in polls}

    async def arrival(poll: Awaitable[Any]) -> tuple[float, Any]:
        got = await poll
        return time.perf_counter(), got

    names = list(polls)
    for i in range(n * len(names)):
        name = names[i % len(names)]
        poll, subject = polls[name]
        task = asyncio.create_task(arrival(poll()))
        await asyncio.sleep(0.02)  # its pull request reaches the server (a bench, not a test)
        t0 = time.perf_counter()
        await c.js.publish(subject, PAYLOAD)
        at, got = await task
        lat[name].append((at - t0) * 1000)
        msg = {"plain": lambda g: g[0], "priority": lambda g: g[1], "one_level": lambda g: g}[name](got)
        await msg.ack()
    base = statistics.median(lat["plain"])
    return {"items_each": n, **{f"{k}_ms": {"median": round(statistics.median(v), 3), "p90": round(pct(v, 90), 3),
                                           "max": round(max(v), 3), "vs_plain": round(statistics.median(v) / base, 3)}
                                for k, v in lat.items()},
            "note": "publish -> the message in hand (the item's arrival, not the publish ack)"}
