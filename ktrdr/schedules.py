"""Schedules (issue 22, item 1): what a schedule is and what each of its firings means, as pure code.

nats-server fires them, not us: a schedule is a message on `sched.def.<name>` in the SCHEDULES stream
carrying the server's message-schedule headers (`Nats-Schedule: @every 15m` or a 6-field cron,
`Nats-Schedule-Time-Zone`, `Nats-Schedule-Target: sched.fire.<name>`), and the server stores a copy of
its body on the target at each time (adding `Nats-Scheduler` and `Nats-Schedule-Next`). The body is an
events.messages.Schedule whose `command` is the starting command each firing runs. A paused schedule is
the same body without the headers (the server then has nothing to fire); a removed one a tombstone.
After the server was down over several times, it fires a repeating schedule once when it is back
(nats-server's scheduler skips ahead): `catch_up` says so.

Nothing here talks to NATS: ktrdr/transport/schedules.py reads and writes, the orchestrator
(actors/_orch_schedules.py) applies `decide`.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import datetime, timedelta
from typing import Literal

from events import subjects
from events.bounds import (
    MAX_SCHEDULE_NAME,
    MAX_SCHEDULE_SPEC,
    MAX_TIME_ZONE,
    SCHEDULE_MAX_EVERY_S,
    SCHEDULE_MIN_EVERY_S,
    SCHEDULE_NAME_PATTERN,
)
from events.messages import OverlapPolicy, Schedule
from ktrdr.errors import ValidationError

OVERLAP_POLICIES: tuple[OverlapPolicy, ...] = ("skip", "buffer-one", "allow")
# Header names, as nats-server's server/stream.go spells them (JSSchedulePattern, ...).
H_SCHEDULE = "Nats-Schedule"
H_TIME_ZONE = "Nats-Schedule-Time-Zone"
H_TARGET = "Nats-Schedule-Target"
H_NEXT = "Nats-Schedule-Next"  # on a firing: when the server fires it next
H_ROLLUP = "Nats-Rollup"  # a definition replaces the one before it (the server requires `sub` for schedules)
H_TRIGGER = "Ktrdr-Trigger"  # `ktrdr schedule trigger`: a firing published by a person, not the server
# A firing the server stored this much after the time its previous firing announced is a catch-up:
# the server (or the whole stack) was down over at least one of its times.
CATCH_UP_TOLERANCE_S = 2.0

_NAME = re.compile(SCHEDULE_NAME_PATTERN)
_EVERY = re.compile(r"^(?:(\d{1,6})d)?(?:(\d{1,6})h)?(?:(\d{1,6})m)?(?:(\d{1,6})s)?$")
_CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,?-]{1,40}$")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        shown = str(name)[:40]
        raise ValidationError(f"schedule name {shown!r}: use 1-{MAX_SCHEDULE_NAME} lower-case letters, digits, "
                              "- and _ (starting with a letter or digit), e.g. nightly-refresh")
    return name


def every_seconds(text: str) -> float:
    """`15m`, `1h30m`, `1s`, `2d` -> seconds (bounded: at least 1 s, at most a year)."""
    m = _EVERY.match(text.strip()) if isinstance(text, str) and len(text) <= 32 else None
    if not m or not any(m.groups()):
        raise ValidationError(f"--every {str(text)[:32]!r}: expected a duration like 30s, 15m, 1h30m or 1d")
    d, h, mi, s = (int(g or 0) for g in m.groups())
    secs = float(((d * 24 + h) * 60 + mi) * 60 + s)
    if not SCHEDULE_MIN_EVERY_S <= secs <= SCHEDULE_MAX_EVERY_S:
        raise ValidationError(f"--every {text}: between {SCHEDULE_MIN_EVERY_S:g} s and "
                              f"{SCHEDULE_MAX_EVERY_S / 86400:g} days")
    return secs


def every_spec(seconds: float) -> str:
    """The server's pattern for an interval (Go's duration syntax: h, m, s)."""
    total = int(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return "@every " + "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v) if total else "@every 0s"


def check_cron(text: str) -> str:
    """A 6-field cron (SEC MIN HOUR DOM MON DOW) or one of the server's macros, checked for shape here;
    the server's parser judges the values (a schedule it refuses is not stored)."""
    if not isinstance(text, str) or len(text) > MAX_SCHEDULE_SPEC:
        raise ValidationError(f"--cron: at most {MAX_SCHEDULE_SPEC} characters")
    t = " ".join(text.split())
    if t in _CRON_MACROS:
        return t
    fields = t.split(" ")
    if len(fields) != 6 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ValidationError(f"--cron {t[:60]!r}: expected 6 fields, SEC MIN HOUR DOM MON DOW "
                              "(e.g. '0 30 18 * * 1-5'), or @hourly, @daily, @weekly, @monthly, @yearly")
    return t


def check_tz(name: str | None) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or len(name) > MAX_TIME_ZONE or ".." in name or name.startswith("/"):
        raise ValidationError(f"--tz {str(name)[:40]!r} is not a time zone (e.g. America/New_York)")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"--tz {name!r} is not a time zone (e.g. America/New_York, Europe/Zurich, UTC)") \
            from None
    return name


def check_overlap(overlap: str) -> OverlapPolicy:
    if overlap not in OVERLAP_POLICIES:
        raise ValidationError(f"--overlap {str(overlap)[:20]!r}: expected one of {', '.join(OVERLAP_POLICIES)}")
    return overlap  # type: ignore[return-value]


def spec_from(cron: str | None, every: str | None, tz: str | None) -> str:
    """The server's pattern from --cron or --every (exactly one); a time zone goes with a cron only
    (the server refuses one on `@every`)."""
    if (cron is None) == (every is None):
        raise ValidationError("give one of --cron 'SEC MIN HOUR DOM MON DOW' or --every DURATION")
    if every is not None:
        if tz is not None:
            raise ValidationError("--tz goes with --cron only (an --every interval has no time zone)")
        return every_spec(every_seconds(every))
    return check_cron(cron or "")


def interval_s(spec: str) -> float | None:
    """The interval of an `@every` schedule, None for a cron."""
    if spec.startswith("@every "):
        try:
            return every_seconds(spec[len("@every "):])
        except ValidationError:
            return None
    return None


def definition_headers(schedule: Schedule) -> dict[str, str]:
    """The headers of a definition's message: the server's schedule headers while it is active, none
    (so the server fires nothing) while paused or removed; always a rollup of what was there before."""
    headers = {H_ROLLUP: "sub"}
    if not schedule.paused and not schedule.removed:
        headers[H_SCHEDULE] = schedule.spec
        headers[H_TARGET] = subjects.schedule_fire(schedule.name)
        if schedule.tz is not None:
            headers[H_TIME_ZONE] = schedule.tz
    return headers


Decision = Literal["start", "skip", "buffer"]


def decide(overlap: OverlapPolicy, running: str | None, buffered: bool) -> Decision:
    """What a firing does while `running` (the op id of the schedule's operation that has not ended, or
    None) and `buffered` (a firing already waits for it), as Temporal's overlap policies: `skip` starts
    nothing while one runs; `buffer-one` keeps one firing to start when it ends (any further one is
    skipped); `allow` starts every firing."""
    if running is None or overlap == "allow":
        return "start"
    if overlap == "buffer-one" and not buffered:
        return "buffer"
    return "skip"


def is_catch_up(fired_at: datetime, previous_next: datetime | None) -> bool:
    """Whether a firing came late: after the time the previous firing announced as the next one, by
    more than CATCH_UP_TOLERANCE_S (the server was down over it, and fired once on its return)."""
    if previous_next is None:
        return False
    return fired_at - previous_next > timedelta(seconds=CATCH_UP_TOLERANCE_S)


def parse_next(value: str | None) -> datetime | None:
    """A firing's Nats-Schedule-Next (RFC 3339), or None ("purge": not repeating, or unreadable)."""
    if not value or len(value) > 40:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def missed_count(fired_at: datetime, previous_next: datetime | None, spec: str) -> int:
    """How many times of an `@every` schedule fell while it could not fire (0 when unknown: a cron)."""
    every = interval_s(spec)
    if previous_next is None or every is None or fired_at <= previous_next:
        return 0
    return max(1, int((fired_at - previous_next).total_seconds() // every))
