"""Value objects that configure a stack's failure handling.

They are frozen and validated on construction, so a bad setting fails where it is
written rather than when Redis first misbehaves.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._validation import check_duration


@dataclass(frozen=True, slots=True)
class GracefulDegradation:
    """Skip a failing layer instead of failing the call.

    A layer that fails is skipped for ``retry_after`` seconds; reads go on to the next
    layer and the fetcher, writes to it are dropped (and counted). After ``retry_after``
    the layer is tried again and re-enabled when it works.
    """

    retry_after: float = 10.0
    """Seconds a failed layer is skipped before the next request tries it again."""

    def __post_init__(self) -> None:
        check_duration(self.retry_after, "retry_after")


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    """Stop trying a layer after ``threshold`` consecutive failures.

    The open breaker skips the layer for ``reset_after`` seconds, then lets one probe
    through (half-open): success closes it, failure opens it again.
    """

    threshold: int = 5
    """Consecutive failures that open the breaker."""
    reset_after: float = 30.0
    """Seconds the breaker stays open before it lets one probe through."""

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int):
            raise TypeError(f"threshold must be an int, not {type(self.threshold).__name__}")
        if self.threshold < 1:
            raise ValueError(f"threshold must be at least 1, got {self.threshold}")
        check_duration(self.reset_after, "reset_after")
