"""The Interactive Brokers layer: one read-only ib_async connection (IbClient), IB pacing
(PacingRules / PacingLimiter), typed IB errors, and a simulated gateway (ktrdr.ib.sim)."""

from ktrdr.ib.client import IbClient
from ktrdr.ib.pacing import PacingLimiter, PacingRules, RequestKey, lower_bound_seconds

__all__ = ["IbClient", "PacingLimiter", "PacingRules", "RequestKey", "lower_bound_seconds"]
