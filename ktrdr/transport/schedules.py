"""SCHEDULES read and written: a schedule's definition (sched.def.<name>, the message nats-server fires),
a manual firing (sched.fire.<name>), the orchestrator's records of firings (sched.hist.<name>). The
meaning of each lives in ktrdr/schedules.py; this module only moves them.
"""

from __future__ import annotations

import msgspec
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from events import subjects
from events.bounds import MAX_SCHEDULES, SCHEDULE_HISTORY
from events.codec import encode
from events.messages import Schedule, ScheduleFired
from ktrdr import schedules
from ktrdr.errors import ValidationError

# What the server says when it refuses a schedule (its err_codes): a pattern or a time zone it cannot
# parse. Anything else it refuses is not the user's input.
_REFUSED = {10189: "the server refuses the schedule", 10223: "the server refuses the time zone"}


def decode_schedule(data: bytes) -> Schedule:
    return msgspec.json.decode(data, type=Schedule)


async def definition(js: JetStreamContext, name: str) -> Schedule | None:
    """A schedule's current definition (a removed one is None)."""
    try:
        raw = await js.get_last_msg(subjects.STREAM_SCHEDULES, subjects.schedule_def(name), direct=True)
    except (NotFoundError, NoRespondersError):
        return None
    try:
        sched = decode_schedule(raw.data or b"")
    except msgspec.DecodeError:
        return None
    return None if sched.removed or sched.name != name else sched


async def definitions(js: JetStreamContext) -> list[Schedule]:
    """Every schedule that is not removed, by name."""
    try:
        info = await js.stream_info(subjects.STREAM_SCHEDULES, subjects_filter=subjects.SCHED_DEF_ALL)
    except NotFoundError:
        return []
    names = sorted(n for s in (info.state.subjects or {}) if (n := subjects.schedule_of_subject(s)) is not None)
    out = []
    for name in names[: MAX_SCHEDULES * 4]:  # tombstones count too; never an unbounded walk
        sched = await definition(js, name)
        if sched is not None:
            out.append(sched)
    return out


async def put_definition(js: JetStreamContext, schedule: Schedule) -> int:
    """Store a definition (replacing the one before it); the server parses its pattern and time zone
    and refuses what it cannot fire: a ValidationError then, and nothing is stored."""
    try:
        ack = await js.publish(subjects.schedule_def(schedule.name), encode(schedule),
                               stream=subjects.STREAM_SCHEDULES, headers=schedules.definition_headers(schedule))
    except APIError as exc:
        what = _REFUSED.get(exc.err_code or 0)
        if what is None:
            raise
        raise ValidationError(f"{what}: {exc.description} ({schedule.spec!r}"
                              + (f", time zone {schedule.tz!r})" if schedule.tz else ")")) from None
    return ack.seq


async def fire_now(js: JetStreamContext, schedule: Schedule) -> int:
    """`schedule trigger`: a firing of our own on the schedule's target (the server's own firings
    carry Nats-Scheduler, which a client may not set)."""
    ack = await js.publish(subjects.schedule_fire(schedule.name), encode(schedule),
                           stream=subjects.STREAM_SCHEDULES, headers={schedules.H_TRIGGER: "manual"})
    return ack.seq


async def summaries(js: JetStreamContext) -> list[dict[str, object]]:
    """Each schedule as `schedule list` and the page show it: when it fires, its policy and state, what
    it runs, and its last firing."""
    from ktrdr.commands import describe

    rows: list[dict[str, object]] = []
    for sched in await definitions(js):
        last = await history(js, sched.name, 1)
        rows.append({"name": sched.name, "spec": sched.spec, "tz": sched.tz, "overlap": sched.overlap,
                     "state": "paused" if sched.paused else "active", "command": describe(sched.command)[1],
                     "last_firing": firing_row(last[-1]) if last else None})
    return rows


def firing_row(rec: ScheduleFired) -> dict[str, object]:
    return {"fired_at": rec.fired_at, "seq": rec.seq, "outcome": rec.outcome, "op_id": rec.op_id,
            "catch_up": rec.catch_up, "manual": rec.manual, "note": rec.note}


async def history(js: JetStreamContext, name: str, limit: int = SCHEDULE_HISTORY) -> list[ScheduleFired]:
    """The orchestrator's records of a schedule's firings, oldest first (the last `limit`)."""
    subject = subjects.schedule_hist(name)
    out: list[ScheduleFired] = []
    seq = 1
    for _ in range(SCHEDULE_HISTORY + 1):  # the subject keeps at most SCHEDULE_HISTORY
        try:
            raw = await js.get_msg(subjects.STREAM_SCHEDULES, seq=seq, subject=subject, next=True, direct=True)
        except (NotFoundError, NoRespondersError):
            break
        if raw.seq is None:
            break
        seq = raw.seq + 1
        try:
            out.append(msgspec.json.decode(raw.data or b"", type=ScheduleFired))
        except msgspec.DecodeError:
            continue
    return out[-limit:]
