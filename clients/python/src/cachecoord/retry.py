"""Which calls are retried, and how long to wait between attempts.

A call is retried only when it failed with UNAVAILABLE (the server was unreachable or draining) and repeating it
cannot change the outcome: Get, BatchGet, Invalidate, InvalidatePattern, ReleaseLease, RenewLease and Stats
always; Set and BatchSet only when every entry carries a version or a lease token (a plain Set that did land
before the failure could otherwise overwrite a newer write on its second try). No other code is ever retried:
INVALID_ARGUMENT, FAILED_PRECONDITION (LEASE_LOST, STALE_VERSION) and the rest are answers, not accidents, and so
is UNAVAILABLE with the reason LOADER_FAILED (the loader was reached and failed).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

#: Methods whose every call is idempotent (proto/cachecoord/v1/cache_service.proto, "Retries").
IDEMPOTENT = frozenset({"Get", "BatchGet", "Invalidate", "InvalidatePattern", "ReleaseLease", "RenewLease", "Stats"})


@dataclass(frozen=True)
class RetryPolicy:
    """Jittered exponential backoff. Attempt n (n >= 1) is followed, if it failed with a retryable error, by a
    sleep drawn uniformly from [d/2, d] with d = min(max_backoff, initial_backoff * multiplier ** (n - 1)).
    All attempts and sleeps fit in the call's deadline (the Client's timeout, or the call's own): the deadline is
    overall, not per attempt. max_attempts = 1 turns retries off."""

    max_attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError(f"invalid retry policy {self}")

    def backoff(self, attempt: int) -> float:
        """Seconds to sleep after failed attempt number `attempt` (1-based)."""
        nominal = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return random.uniform(nominal / 2, nominal)


NO_RETRY = RetryPolicy(max_attempts=1)


def may_retry(method: str, request: object) -> bool:
    """Whether `method` with `request` is safe to send twice."""
    if method in IDEMPOTENT:
        return True
    if method == "Set":
        return _conditional(request)
    if method == "BatchSet":
        entries = getattr(request, "entries", ())
        return len(entries) > 0 and all(_conditional(entry) for entry in entries)
    return False


def _conditional(set_request: object) -> bool:
    return set_request.HasField("version") or bool(set_request.lease_token)  # type: ignore[attr-defined]


#: UNAVAILABLE reasons that are answers, not accidents: the server reached the entity's loader and it failed.
#: Repeating the call would only load the failing database again (and trip the server's loader breaker sooner).
FINAL_REASONS = frozenset({"LOADER_FAILED"})


def retryable(code: "grpc.StatusCode | None", reason: "str | None") -> bool:
    return code == grpc.StatusCode.UNAVAILABLE and reason not in FINAL_REASONS
