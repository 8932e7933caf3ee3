"""The exceptions layercache raises.

The hierarchy is flat, in trio's manner: *Closed* means the caller used a stack outside
its ``async with`` block; *Unavailable* means something outside the process (a Redis
server) failed; *Serialization* means a value could not be encoded for a layer.
"""

from __future__ import annotations


class CacheError(Exception):
    """Base class of every error layercache raises on its own account."""


class CacheClosedError(CacheError):
    """The stack was used before ``async with`` entered it or after the block exited.

    Also raised to callers still waiting on a load when the stack exits, since the
    stack cancels its loads on exit.
    """


class LayerUnavailableError(CacheError):
    """A layer failed (connection refused, timeout, server error) in strict mode.

    The underlying error is chained as ``__cause__``. :attr:`layer` names the layer.
    """

    def __init__(self, layer: str, message: str) -> None:
        super().__init__(f"layer {layer!r} is unavailable: {message}")
        self.layer = layer
        """The layer's name (``"redis"``, say), or ``"invalidation bus"`` for the bus."""


class SerializationError(CacheError):
    """A value cannot be encoded by a layer's serializer.

    Raised by ``set``/``set_many``/``get`` with a fetcher *before any layer is written*,
    so a value is either stored everywhere or nowhere.
    """


class FetchTimeoutError(CacheError, TimeoutError):
    """A fetch ran past the call's ``Freshness(hard_timeout=...)`` and was cancelled,
    with no stale entry (within ``stale_if_error``) to answer with instead."""
