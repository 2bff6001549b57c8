"""Retry policies (issue 22, item 2): whether a failed attempt runs again, and after how long. Pure:
the worker that saw the failure asks `next_attempt`, and when it gets a wait it hands the work item
back to JetStream with that delay (a nak with delay: the redelivery is the next attempt, granted
as any other by the orchestrator) instead of publishing the failure. No timer of ours waits.

A policy is its domain's default (events.bounds.DEFAULT_RETRIES, Temporal's 1 s x 2.0 up to 100 s)
unless the command says `retries` or `retry_max_interval_s`. Only failures whose error code is in
events.bounds.RETRYABLE_CODES are retried; every attempt is a delivery of the work item, so
KTRDR_MAX_DELIVER caps the attempts too; and none starts past the operation's deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from events.bounds import DEFAULT_RETRIES, RETRY_BACKOFF, RETRY_INITIAL_S, RETRY_MAX_INTERVAL_S, RETRYABLE_CODES
from events.messages import Command


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int  # the first one included
    initial_s: float = RETRY_INITIAL_S
    backoff: float = RETRY_BACKOFF
    max_interval_s: float = RETRY_MAX_INTERVAL_S

    def wait_after(self, attempt: int) -> float:
        """The wait before the attempt after `attempt` (1-based)."""
        return min(self.initial_s * self.backoff ** max(attempt - 1, 0), self.max_interval_s)


def policy_for(cmd: Command, max_deliver: int) -> RetryPolicy:
    retries = cmd.retries if cmd.retries is not None else DEFAULT_RETRIES.get(cmd.domain, 0)
    return RetryPolicy(max_attempts=max(1, min(retries + 1, max_deliver)),
                       max_interval_s=cmd.retry_max_interval_s or RETRY_MAX_INTERVAL_S)


def retryable(code: str) -> bool:
    return code in RETRYABLE_CODES


def next_attempt(policy: RetryPolicy, attempt: int, code: str, now: datetime,
                 deadline: datetime | None) -> float | None:
    """The seconds to wait before attempt `attempt + 1`, or None when the failure of `attempt` is
    final: not retryable, the attempts spent, or the next one would start past the deadline."""
    if not retryable(code) or attempt >= policy.max_attempts:
        return None
    wait = policy.wait_after(attempt)
    if deadline is not None and now + timedelta(seconds=wait) >= deadline:
        return None
    return wait


def announce(policy: RetryPolicy, attempt: int, wait: float, reason: str) -> str:
    """What every renderer shows while it waits: `attempt 2 of 5 in 4 s: IB gateway disconnected`."""
    return f"attempt {attempt + 1} of {policy.max_attempts} in {wait:g} s: {reason}"
