"""IB historical-data pacing: the four rules as data, and a limiter that makes requests obey them.

IB answers error 162 ("Historical data request pacing violation") and returns nothing when a client
breaks one of these rules (IB's historical data limitations page):

1. no identical request within 15 s;
2. no 6 or more requests for the same contract + exchange + tick type within 2 s;
3. no more than 60 historical requests within any 10 minutes;
4. at most 50 historical requests open at once.

`PacingLimiter.acquire` waits just long enough that the next request obeys all four, announcing every
wait through `on_wait` before sleeping (so a progress line can say "waiting 12 s for IB pacing"
instead of going silent), and stops waiting the moment a CancellationToken trips. The simulated
gateway enforces the very same `PacingRules`, so both sides agree on what a violation is.

When a request counts: the gateway counts it when it reads it, which can be well after it was sent:
it reads a connection's messages in order, so a request waits behind earlier ones (the simulated
gateway, on a loaded 2-core machine: 20-150 ms behind ten contract lookups) and behind any pause
(seen: a 470 ms garbage collection in the process running the simulated gateway). The send time is
only a lower bound on that instant, the answer an upper bound (the gateway had the request before
it answered). So the 10-minute rule counts each request from its answer (from its release: a
request abandoned mid-way counts from then), and an open request counts as inside the window until
then: a late read cannot make the gateway's window end later than the limiter's. The short rules
(identical, burst) still count from the send plus `_margin`: counting them from the answer would
cost one round trip per burst of a load, while for the 10-minute rule it costs one per window.

A `gate` passed to `acquire` is awaited once the request holds its slot and before it counts as
sent; raising there drops the request and gives the slot back with nothing counted (its caller went
away, the gateway is down). Holding the slot through the gate's round trip keeps the decision and the
count in one step, and lets the other owners' requests take the remaining budget meanwhile. `history()` /
`restore()` carry the recent requests across a restart as wall-clock stamps (IB's windows keep
running while the process is away); `changed` is set whenever a request is counted or answered, so
whoever persists the history can write it coalesced.

Fair turns: `acquire(owner=...)` names who asks (the operation). When requests of several owners
wait, a free slot goes to the waiting owner served least recently (round robin by operation), so a
universe of children shares the budget in turn and none starves behind another's backlog. An owner
whose own request cannot go yet (its contract's burst or identical rule) does not hold the others up.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from ktrdr.cancellation import CancellationToken
from ktrdr.errors import OperationCancelledError

OnWait = Callable[[float, str], None]
Gate = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class PacingRules:
    """IB's pacing limits; `time_scale` shrinks every window (0.01 makes 10 min last 6 s) for tests."""

    identical_window_s: float = 15.0
    burst_count: int = 6  # this many requests for one contract within burst_window_s is a violation
    burst_window_s: float = 2.0
    max_requests: int = 60  # more than this within window_s is a violation
    window_s: float = 600.0
    max_open: int = 50
    time_scale: float = 1.0
    # Not a historical rule and never scaled: the API accepts ~50 messages/s and ib_async queues
    # anything above 45/s, which would delay a request past the instant the limiter stamped it.
    max_per_second: int = 40

    @property
    def identical_window(self) -> float:
        return self.identical_window_s * self.time_scale

    @property
    def burst_window(self) -> float:
        return self.burst_window_s * self.time_scale

    @property
    def window(self) -> float:
        return self.window_s * self.time_scale


@dataclass(frozen=True)
class RequestKey:
    """What IB compares when pacing: the contract + exchange + tick type, and the full request."""

    contract: str  # conId (or symbol when unknown)
    exchange: str
    what_to_show: str
    params: str = ""  # end, duration, bar size, useRTH: equal params on an equal contract = identical

    @property
    def contract_key(self) -> tuple[str, str, str]:
        return (self.contract, self.exchange, self.what_to_show)


def _margin(window: float) -> float:
    # The short rules stamp a request before it travels and the gateway stamps it when its event loop
    # gets to it, so stay beyond each window by 2% plus 25 ms of scheduling jitter (seen: 10-20 ms
    # on a loaded 2-core machine, where 5 ms let a 162 through at a 0.1 s test window).
    return window * 0.02 + 0.025


def _window_margin(window: float) -> float:
    # The 10-minute rule counts each request from its answer (see the module docstring), which the
    # gateway sent after it counted the request: no jitter to cover, only the two clocks' rates
    # (quartz: within 100 ppm; 0.1% is ten times that) and a few ms of rounding. 2% + 25 ms, the short
    # rules' margin, cost 12 s per 10-minute window: 2% of every universe bound by this rule.
    return window * 0.001 + 0.005


def _rule(reason: str) -> str:
    """Which rule a wait's reason names ("identical request", "requests within", "API messages", ...)."""
    return " ".join(reason.split(" ")[1:3])


def lower_bound_seconds(n_requests: int, rules: PacingRules | None = None) -> float:
    """Minimum wall time IB's rules allow between the first and last of `n` distinct requests on one
    contract (latency and safety margins ignored): the earliest schedule where every request is
    burst_count-1 or fewer per burst window, max_requests per window, max_per_second per second."""
    rules = rules or PacingRules()
    times: list[float] = []
    per_burst = rules.burst_count - 1
    for i in range(n_requests):
        t = 0.0
        if i >= per_burst:
            t = max(t, times[i - per_burst] + rules.burst_window)
        if i >= rules.max_requests:
            t = max(t, times[i - rules.max_requests] + rules.window)
        if i >= rules.max_per_second:
            t = max(t, times[i - rules.max_per_second] + 1.0)
        times.append(max(t, times[-1] if times else 0.0))
    return times[-1] if times else 0.0


class PacingLimiter:
    """Gate every historical request through `acquire` / `release`; one limiter per IB connection."""

    def __init__(self, rules: PacingRules | None = None, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):
        self.rules = rules or PacingRules()
        self._clock = clock
        self._wall = wall_clock
        # Rule 3: answered requests by when their answer came (ascending: answers are stamped as they
        # come, restored stamps are all in the past) and the requests still open, by send time.
        self._all: deque[float] = deque()
        self._log: deque[tuple[float, RequestKey]] = deque()  # the same answered requests with their keys
        self._sent: deque[tuple[float, RequestKey]] = deque()  # open requests (rules 3 and 4)
        self._last_second: deque[float] = deque()  # message-rate cap (see PacingRules.max_per_second)
        self._per_contract: dict[tuple[str, str, str], deque[float]] = {}  # rule 2
        self._identical: dict[RequestKey, float] = {}  # last start per identical request (rule 1)
        self._released = asyncio.Event()
        self.waits = 0  # how many times acquire had to wait (for measurements)
        self.announced = 0  # how many of those waits went to on_wait
        self.waited_s = 0.0
        self.recorded = 0  # requests counted since start (each one went, or was about to go, to IB)
        self.changed = asyncio.Event()  # set on every counted or answered request: the history needs saving
        # Fair turns between owners: the keys each owner has waiting, and when each was last served.
        self._waiting: dict[str, list[RequestKey]] = {}
        self._served: dict[str, int] = {}
        self._arrived: dict[str, int] = {}  # first arrival of an owner still waiting (ties in turn order)
        self._seq = 0
        self._turn = asyncio.Event()  # set on every grant: owners who were not next decide again

    @property
    def open_requests(self) -> int:
        return len(self._sent)

    def _prune(self, now: float) -> None:
        horizon = now - self.rules.window - _window_margin(self.rules.window)
        while self._all and self._all[0] <= horizon:
            self._all.popleft()
        while self._log and self._log[0][0] <= horizon:
            self._log.popleft()
        while self._last_second and self._last_second[0] <= now - 1.0 - _margin(1.0):
            self._last_second.popleft()
        burst_h = now - self.rules.burst_window - _margin(self.rules.burst_window)
        for ckey in [k for k, q in self._per_contract.items() if not q or q[-1] <= burst_h]:
            del self._per_contract[ckey]
        ident_h = now - self.rules.identical_window - _margin(self.rules.identical_window)
        for key in [k for k, t in self._identical.items() if t <= ident_h]:
            del self._identical[key]

    def required_wait(self, key: RequestKey, now: float | None = None) -> tuple[float, str]:
        """Seconds to wait before `key` may be sent (0 when it may go now) and which rule says so.
        -1 means "until an open request finishes" (rule 4 has no known end time)."""
        now = self._clock() if now is None else now
        self._prune(now)
        r = self.rules
        wait, reason = 0.0, ""
        if len(self._sent) >= r.max_open:
            return -1.0, f"{len(self._sent)} IB requests open (limit {r.max_open})"
        last = self._identical.get(key)
        if last is not None:
            w = last + r.identical_window + _margin(r.identical_window) - now
            if w > wait:
                wait, reason = w, f"an identical request was sent less than {r.identical_window:g} s ago"
        recent = self._per_contract.get(key.contract_key)
        allowed = r.burst_count - 2  # earlier requests allowed inside the window besides this one
        if recent is not None:
            bw = r.burst_window + _margin(r.burst_window)
            inside = [t for t in recent if t > now - bw]
            if len(inside) > allowed:
                w = inside[len(inside) - allowed - 1] + bw - now
                if w > wait:
                    wait, reason = w, f"{r.burst_count} requests for {key.contract} within {r.burst_window:g} s"
        excess = len(self._all) + len(self._sent) - (r.max_requests - 1)  # open ones are inside
        if excess > len(self._all):
            return -1.0, f"{r.max_requests} requests within {r.window:g} s, {len(self._sent)} not answered yet"
        if excess > 0:
            w = self._all[excess - 1] + r.window + _window_margin(r.window) - now
            if w > wait:
                wait, reason = w, f"{r.max_requests} requests within {r.window:g} s"
        if len(self._last_second) > r.max_per_second - 1:
            w = self._last_second[len(self._last_second) - r.max_per_second] + 1.0 + _margin(1.0) - now
            if w > wait:
                wait, reason = w, f"{r.max_per_second} API messages per second"
        return wait, reason

    def _next_owner(self, now: float) -> str | None:
        """Among the waiting owners with a request that could go now, the one served least recently."""
        ready = [o for o, keys in self._waiting.items()
                 if any(self._could_go(k, now) for k in keys)]
        if not ready:
            return None
        return min(ready, key=lambda o: (self._served.get(o, -1), self._arrived.get(o, 0)))

    def _could_go(self, key: RequestKey, now: float) -> bool:
        wait, _ = self.required_wait(key, now)
        return wait <= 0 and wait != -1.0

    async def acquire(
        self,
        key: RequestKey,
        on_wait: OnWait | None = None,
        cancel: CancellationToken | None = None,
        gate: Gate | None = None,
        owner: str = "",
    ) -> float:
        """Wait until `key` obeys every rule and it is `owner`'s turn, then count it as sent and open.
        Returns seconds waited. Raises OperationCancelledError as soon as `cancel` trips, and whatever
        `gate` raises when it is awaited with the slot held (the slot is given back, nothing counted)."""
        self._seq += 1
        self._waiting.setdefault(owner, []).append(key)
        self._arrived.setdefault(owner, self._seq)
        try:
            return await self._acquire(key, on_wait, cancel, gate, owner)
        finally:
            keys = self._waiting.get(owner, [])
            if key in keys:
                keys.remove(key)
            if not keys:
                self._waiting.pop(owner, None)
                self._arrived.pop(owner, None)
            self._turn.set()  # whoever was waiting behind this one decides again

    def _my_turn(self, owner: str, now: float) -> bool:
        if len(self._waiting) <= 1:
            return True
        return self._next_owner(now) in (owner, None)

    async def _acquire(self, key: RequestKey, on_wait: OnWait | None, cancel: CancellationToken | None,
                       gate: Gate | None, owner: str) -> float:
        waited = 0.0
        said: tuple[float, str, float] | None = None  # last wait announced: its end, its rule; first said at
        while True:
            if cancel is not None and cancel.is_cancelled:
                raise OperationCancelledError("waiting for IB pacing", cancel.reason)
            now = self._clock()
            wait, reason = self.required_wait(key, now)
            if wait <= 0 and wait != -1.0 and not self._my_turn(owner, now):
                self._turn.clear()  # another owner is next: wait for its grant (or its leaving)
                started = self._clock()
                await _sleep_or_cancel(self.rules.burst_window, self._turn, cancel)
                waited += self._clock() - started
                continue
            if wait <= 0 and wait != -1.0:
                # Count it now, in the same step as the decision (nothing can come between), and
                # only then await the gate: the gate's round trip holds this request's slot, not the
                # others' turns (awaited before the count, it held up every owner behind this one:
                # gate median 0.2 s at 8 loads of 15 segments, python -m bench universe).
                prev = self._record(key, now, owner)
                if gate is None:
                    return self._commit(waited)
                try:
                    await gate()
                    if cancel is not None and cancel.is_cancelled:
                        raise OperationCancelledError("waiting for IB pacing", cancel.reason)
                except BaseException:
                    self._unrecord(key, now, prev)  # dropped: it never went, so it never counted
                    raise
                return self._commit(waited)
            self.waits += 1
            if on_wait is not None and self._worth_saying(said, now, wait, reason):
                # Report first: the caller shows the wait while it happens, not after.
                said = (now + max(wait, 0.0), _rule(reason), now if said is None else said[2])
                self.announced += 1
                on_wait(max(wait, 0.0), f"waiting {max(wait, 0.0):.3g} s for IB pacing: {reason}")
            started = self._clock()
            if wait == -1.0:
                self._released.clear()
                await _sleep_or_cancel(None, self._released, cancel)
            else:
                await _sleep_or_cancel(wait, None, cancel)
            spent = self._clock() - started
            waited += spent
            self.waited_s += spent

    @staticmethod
    def _worth_saying(said: tuple[float, str, float] | None, now: float, wait: float, reason: str) -> bool:
        """A wait is announced once: again only under another rule, or when it now ends later than
        said by over half of the whole wait said so far (+ 50 ms), so a request says it at most a
        logarithmic number of times however long it waits. Many requests waiting for the 10-minute
        window all wake as each slot frees and all but one wait again for the next slot, a slot
        later: announcing each of those (one interim reply and one progress event each) was 13
        announcements per request at 8 loads x 15 segments (python -m bench universe)."""
        if said is None:
            return True
        end, rule, first = said
        return _rule(reason) != rule or now + max(wait, 0.0) > end + 0.5 * (end - first) + 0.05

    def note_message(self) -> None:
        """Another API message (a contract lookup, a head timestamp) went out: it shares the
        per-second budget, or ib_async's throttle would delay historical requests already stamped."""
        self._last_second.append(self._clock())

    def _record(self, key: RequestKey, now: float, owner: str = "") -> float | None:
        """Take the slot (`_commit` makes it count as sent; `_unrecord` gives it back). Returns the
        identical rule's previous stamp for `key`, which `_unrecord` puts back."""
        self._seq += 1
        self._served[owner] = self._seq
        if len(self._served) > 4096:  # owners long gone: keep the ones still waiting
            self._served = {o: t for o, t in self._served.items() if o in self._waiting}
        self._turn.set()
        self._sent.append((now, key))
        self._last_second.append(now)
        self._per_contract.setdefault(key.contract_key, deque()).append(now)
        prev = self._identical.get(key)
        self._identical[key] = now
        return prev

    def _commit(self, waited: float) -> float:
        self.recorded += 1
        self.changed.set()
        return waited

    def _unrecord(self, key: RequestKey, now: float, prev: float | None) -> None:
        """A slot taken but never used (its gate raised): every rule forgets it, others may have it."""
        with contextlib.suppress(ValueError):
            self._sent.remove((now, key))
        with contextlib.suppress(ValueError):
            self._last_second.remove(now)
        q = self._per_contract.get(key.contract_key)
        if q is not None:
            with contextlib.suppress(ValueError):
                q.remove(now)
        if self._identical.get(key) == now:
            if prev is None:
                del self._identical[key]
            else:
                self._identical[key] = prev
        self._released.set()
        self._turn.set()

    # --- history across restarts --------------------------------------------------------------
    def history(self) -> list[tuple[float, RequestKey]]:
        """The requests still inside the longest window (10 minutes), stamped with the wall clock: each
        answered one when its answer came, each open one now (the latest instant known so far)."""
        now = self._clock()
        self._prune(now)
        offset = self._wall() - now
        return [(t + offset, key) for t, key in self._log] + [(now + offset, key) for _, key in self._sent]

    def restore(self, stamps: Iterable[tuple[float, RequestKey]]) -> int:
        """Count requests a previous process sent (wall-clock stamps, e.g. from `history()`) as if
        this limiter had sent them and seen them answered then. Stamps from the future (clock skew)
        count as now. Returns how many requests are still inside a window."""
        now = self._clock()
        offset = self._wall() - now
        horizon = now - self.rules.window - _window_margin(self.rules.window)
        restored = sorted(((min(w - offset, now), k) for w, k in stamps
                           if math.isfinite(w) and w - offset > horizon), key=lambda e: e[0])
        merged = sorted([*self._log, *restored], key=lambda e: e[0])
        self._log = deque(merged)
        self._all = deque(t for t, _ in merged)
        # The short rules keep what this process counted itself and add the restored stamps.
        recent = now - 1.0 - _margin(1.0)
        self._last_second = deque(sorted([*self._last_second, *(t for t, _ in restored if t > recent)]))
        for t, key in restored:
            self._per_contract.setdefault(key.contract_key, deque()).append(t)
            self._identical[key] = max(t, self._identical.get(key, t))
        for ckey, q in self._per_contract.items():
            self._per_contract[ckey] = deque(sorted(q))
        self._prune(now)
        return len(self._log) + len(self._sent)

    def release(self, key: RequestKey) -> None:
        """The request for `key` finished (answered, failed or cancelled): it is no longer open, and
        from now on the 10-minute rule counts it from this instant (the gateway had it by now)."""
        for i, (_, sent_key) in enumerate(self._sent):
            if sent_key == key:
                del self._sent[i]
                now = self._clock()
                self._all.append(now)
                self._log.append((now, key))
                self.changed.set()
                break
        self._released.set()


async def _sleep_or_cancel(
    seconds: float | None, event: asyncio.Event | None, cancel: CancellationToken | None
) -> None:
    """Sleep `seconds` (or until `event` is set), returning early with OperationCancelledError on cancel."""
    waiters: list[asyncio.Task[object]] = []
    if event is not None:
        waiters.append(asyncio.ensure_future(event.wait()))
    if cancel is not None:
        waiters.append(asyncio.ensure_future(cancel.wait()))
    try:
        if waiters:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(seconds or 0.0)
    finally:
        for w in waiters:
            w.cancel()
    if cancel is not None and cancel.is_cancelled:
        raise OperationCancelledError("waiting for IB pacing", cancel.reason)
