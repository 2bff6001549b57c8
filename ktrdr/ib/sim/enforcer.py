"""Gateway-side pacing judge: decides, as IB does, whether a historical request violates the rules.

It applies the same `PacingRules` as the client-side PacingLimiter but exactly on the window edges
(no safety margin): a client that relies on the limiter must never be judged in violation.
Only accepted requests count toward the windows (a rejected request returned nothing).
"""

from __future__ import annotations

from collections import deque

from ktrdr.ib.pacing import PacingRules, RequestKey


class PacingEnforcer:
    def __init__(self, rules: PacingRules) -> None:
        self.rules = rules
        self._all: deque[float] = deque()
        self._per_contract: dict[tuple[str, str, str], deque[float]] = {}
        self._identical: dict[RequestKey, float] = {}
        self.open = 0

    def violation(self, key: RequestKey, now: float) -> str | None:
        """Which rule a request arriving `now` breaks, or None when it may be served."""
        r = self.rules
        while self._all and self._all[0] <= now - r.window:
            self._all.popleft()
        last = self._identical.get(key)
        if last is not None and now - last < r.identical_window:
            return f"identical request within {r.identical_window:g} s"
        recent = self._per_contract.get(key.contract_key)
        if recent is not None:
            while recent and recent[0] <= now - r.burst_window:
                recent.popleft()
            if len(recent) >= r.burst_count - 1:
                return f"{r.burst_count} requests for one contract within {r.burst_window:g} s"
        if len(self._all) >= r.max_requests:
            return f"more than {r.max_requests} requests within {r.window:g} s"
        if self.open >= r.max_open:
            return f"more than {r.max_open} open requests"
        return None

    def record(self, key: RequestKey, now: float) -> None:
        self._all.append(now)
        self._per_contract.setdefault(key.contract_key, deque()).append(now)
        self._identical[key] = now
        if len(self._identical) > 10_000:  # forget identical-request stamps older than the window
            horizon = now - self.rules.identical_window
            self._identical = {k: t for k, t in self._identical.items() if t > horizon}
