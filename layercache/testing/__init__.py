"""Helpers for testing code that uses layercache, and for testing layers.

- :class:`FakeClock`: a clock to pass as ``CacheStack(clock=...)`` so TTLs move when the
  test says so, on asyncio and trio alike.
- :class:`LayerContract`: the behaviour every layer must have, as a pytest test class;
  subclass it and implement ``make_layer`` to run it against a layer of your own.
"""

from ._clock import FakeClock as FakeClock
from ._contract import LayerContract as LayerContract

__all__ = ("FakeClock", "LayerContract")
