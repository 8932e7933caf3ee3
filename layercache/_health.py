"""The health guard of one remote part (a layer, the bus, the coordinator).

Every request the stack sends to a remote part goes through its :class:`LayerHealth`:
:meth:`LayerHealth.call` for an awaited request, or the same steps by hand for a read
that completes by callback (``admit``, then ``succeeded``, ``lost`` or ``abandoned``).
It is plain synchronous state, owned by the stack, read on the loop's clock (or the
stack's injected clock), and the only code that changes its counters:

- **Graceful degradation** (``GracefulDegradation(retry_after)``): a failure makes the
  layer *degraded* for ``retry_after`` seconds, during which requests are not sent; the
  stack goes on without the layer (reads fall through, writes are dropped and counted).
  After the window the next request is sent again; success makes the layer healthy.
- **Circuit breaker** (``CircuitBreaker(threshold, reset_after)``): ``threshold``
  consecutive failures *open* it for ``reset_after`` seconds (requests are not sent);
  then it is *half-open*: exactly one request goes through as a probe while the others
  are still refused; success closes it, failure opens it again.
- Without either, every request is sent and every failure reaches the caller.

A failure that is a configuration error (the server refused the password or an ACL
forbids a command: a :class:`~._redis._errors.RedisConfigurationError` in its causes)
makes the part *misconfigured* instead, logged as an ERROR, until a request succeeds:
the windows above still apply (so a fixed configuration is noticed), but the state says
that retrying is not what will cure it.

A request that is not sent costs nothing: no connection attempt, no timeout. Each state
change is logged once, not each request.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._clock import Clock
from ._exceptions import LayerUnavailableError
from ._options import CircuitBreaker, GracefulDegradation
from ._redis._errors import is_configuration_error

logger = logging.getLogger("layercache.health")

HEALTHY = "healthy"
DEGRADED = "degraded"
OPEN = "open"
HALF_OPEN = "half-open"
RESTARTING = "restarting"
MISCONFIGURED = "misconfigured"

T = TypeVar("T")


class Skipped:
    """What a guarded request returns when graceful mode skipped it (or its failure)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SKIPPED"


class NotSent(LayerUnavailableError):
    """The error of a request the guard refused in strict mode: nothing was sent, so
    nothing changed."""


class Failed(Skipped):
    """What a guarded request returns when graceful mode skipped its failure: it was
    sent, so whether it took effect is unknown."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "FAILED"


SKIPPED = Skipped()
FAILED = Failed()


class LayerHealth:
    """Failure state of one layer: degraded window, breaker, counters."""

    def __init__(
        self,
        name: str,
        *,
        degradation: GracefulDegradation | None,
        breaker: CircuitBreaker | None,
        clock: Clock,
    ) -> None:
        self.name = name
        self.degradation = degradation
        self.breaker = breaker
        self.clock = clock
        self.failures = 0
        self.consecutive_failures = 0
        self.skipped = 0
        self.dropped = 0
        self.last_error: BaseException | None = None
        self._degraded_until: float | None = None
        self._open_until: float | None = None
        self._probing = False
        self._restarting = False
        self.configuration_errors = 0
        self._misconfigured = False
        """The last failure was a configuration error (see :meth:`failed`)."""
        self._reported = HEALTHY

    def __repr__(self) -> str:
        return (
            f"<LayerHealth {self.name!r} {self.state()} failures={self.failures} "
            f"consecutive={self.consecutive_failures} skipped={self.skipped}>"
        )

    @property
    def graceful(self) -> bool:
        return self.degradation is not None

    def state(self) -> str:
        if self._restarting:
            return RESTARTING
        if self._misconfigured:
            return MISCONFIGURED
        now = self.clock()
        if self._open_until is not None:
            return OPEN if now < self._open_until else HALF_OPEN
        if self._degraded_until is not None and now < self._degraded_until:
            return DEGRADED
        return HEALTHY

    def until(self) -> float | None:
        """When the current degraded or open window ends (on the stack's clock); for
        a misconfigured part, when the window it is skipped for ends, if any."""
        state = self.state()
        now = self.clock()
        if state == OPEN or (state == MISCONFIGURED and self._open_until is not None):
            return self._open_until
        if state == DEGRADED or (
            state == MISCONFIGURED
            and self._degraded_until is not None
            and now < self._degraded_until
        ):
            return self._degraded_until
        return None

    # -- the guard ---------------------------------------------------------------------

    async def call(
        self, request: Callable[..., Awaitable[T]], *args: Any, write: bool = False
    ) -> T | Skipped:
        """Await ``request(*args)`` as the part's health allows.

        Strict mode: a failure raises :class:`LayerUnavailableError` (cause chained),
        and an open breaker refuses at once. Graceful mode: a failing, degraded or open
        part is skipped (:data:`SKIPPED` if nothing was sent, :data:`FAILED` if it was
        sent and failed); a skipped ``write`` (a write, delete or publish) is counted as
        dropped.
        """
        probe = self.admit()
        if probe is None:
            refused = self.not_sent(write)
            if isinstance(refused, LayerUnavailableError):
                raise refused
            return refused
        try:
            result = await request(*args)
        except LayerUnavailableError as error:
            if self.lost(error, probe, write) is FAILED:
                return FAILED
            raise
        except BaseException:
            self.abandoned(probe)
            raise
        self.succeeded(probe)
        return result

    def not_sent(self, write: bool = False) -> Skipped | LayerUnavailableError:
        """A request :meth:`admit` refused: counted; what its caller gets instead."""
        self.skipped += 1
        if self.degradation is not None:
            self.dropped += write
            return SKIPPED
        return self.refusal()

    def lost(
        self, error: LayerUnavailableError, probe: bool, write: bool = False
    ) -> Failed | LayerUnavailableError:
        """A request that failed with ``error``: counted (see :meth:`failed`); what its
        caller gets instead (the error itself in strict mode)."""
        self.failed(error, probe)
        if self.degradation is not None:
            self.dropped += write
            return FAILED
        return error

    # -- transitions -------------------------------------------------------------------

    def admit(self) -> bool | None:
        """May a request go to the layer now?

        :returns: None for "no" (skip it, or fail fast in strict mode); otherwise
            whether the request is the half-open breaker's probe, to pass back.
        """
        if self._open_until is None and self._degraded_until is None and not self._restarting:
            return False  # healthy, and nothing can have changed: the common case, cheap
        if self._restarting:
            return None
        now = self.clock()
        probe = False
        if self._open_until is not None:
            if now < self._open_until or self._probing:
                return None
            self._probing = probe = True
        if self._degraded_until is not None and now < self._degraded_until:
            self._probing = False
            return None
        self._report()
        return probe

    def succeeded(self, probe: bool) -> None:
        if (
            not probe
            and self.consecutive_failures == 0
            and self._degraded_until is None
            and self._open_until is None
        ):
            return  # healthy before, healthy still
        if probe:
            self._probing = False
        self.consecutive_failures = 0
        self._degraded_until = None
        self._open_until = None
        self._misconfigured = False
        self._report()

    def failed(self, error: BaseException, probe: bool) -> None:
        if probe:
            self._probing = False
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = error
        # Refused for good (a password, an ACL): not a flapping server, and said so.
        self._misconfigured = is_configuration_error(error)
        self.configuration_errors += self._misconfigured
        now = self.clock()
        if self.degradation is not None:
            self._degraded_until = now + self.degradation.retry_after
        breaker = self.breaker
        if breaker is not None and (probe or self.consecutive_failures >= breaker.threshold):
            self._open_until = now + breaker.reset_after
        self._report()

    def abandoned(self, probe: bool) -> None:
        """The request was cancelled: it proved nothing either way."""
        if probe:
            self._probing = False

    def crashed(self, error: BaseException) -> None:
        """The layer's actor crashed and is being restarted."""
        self.last_error = error
        self._restarting = True
        self._report()

    def restarted(self) -> None:
        self._restarting = False
        self._report()

    def refusal(self) -> LayerUnavailableError:
        """The error for a request not sent in strict mode (breaker open)."""
        state = self.state()
        until = self.until()
        detail = f"{state}" if until is None else f"{state} for {until - self.clock():.1f} s"
        error = NotSent(
            self.name, f"not tried: circuit breaker {detail} after {self.failures} failures"
        )
        error.__cause__ = self.last_error
        return error

    def _report(self) -> None:
        state = self.state()
        if state == self._reported:
            return
        self._reported = state
        if state == HEALTHY:
            logger.info("layer %r is healthy again", self.name)
        elif state == MISCONFIGURED:
            logger.error(
                "layer %r is misconfigured (retrying cannot help until the configuration "
                "is fixed): %s",
                self.name,
                self.last_error,
            )
        elif state == HALF_OPEN:
            logger.info("layer %r: circuit half-open, sending one probe", self.name)
        else:
            logger.warning("layer %r is %s: %s", self.name, state, self.last_error)
