"""layercache: a multi-layer cache for structured-concurrency programs (trio and asyncio)."""

from ._bus import RedisInvalidationBus as RedisInvalidationBus
from ._distributed import RedisSingleFlightCoordinator as RedisSingleFlightCoordinator
from ._exceptions import CacheClosedError as CacheClosedError
from ._exceptions import CacheError as CacheError
from ._exceptions import FetchTimeoutError as FetchTimeoutError
from ._exceptions import LayerUnavailableError as LayerUnavailableError
from ._exceptions import SerializationError as SerializationError
from ._freshness import Freshness as Freshness
from ._layer import Layer as Layer
from ._layer import LocalLayer as LocalLayer
from ._memory import MemoryLayer as MemoryLayer
from ._options import CircuitBreaker as CircuitBreaker
from ._options import GracefulDegradation as GracefulDegradation
from ._record import Entry as Entry
from ._record import Record as Record
from ._redis_layer import RedisLayer as RedisLayer
from ._serializers import JsonSerializer as JsonSerializer
from ._serializers import MsgpackSerializer as MsgpackSerializer
from ._serializers import PickleSerializer as PickleSerializer
from ._serializers import Serializer as Serializer
from ._stack import CacheStack as CacheStack
from ._statistics import CacheStatistics as CacheStatistics
from ._statistics import CoordinatorStatistics as CoordinatorStatistics
from ._statistics import LayerStatistics as LayerStatistics
from ._telemetry import OpenTelemetry as OpenTelemetry

__all__ = (
    "CacheClosedError",
    "CacheError",
    "CacheStack",
    "CacheStatistics",
    "CircuitBreaker",
    "CoordinatorStatistics",
    "Entry",
    "FetchTimeoutError",
    "Freshness",
    "GracefulDegradation",
    "JsonSerializer",
    "Layer",
    "LayerStatistics",
    "LayerUnavailableError",
    "LocalLayer",
    "MemoryLayer",
    "MsgpackSerializer",
    "OpenTelemetry",
    "PickleSerializer",
    "Record",
    "RedisInvalidationBus",
    "RedisLayer",
    "RedisSingleFlightCoordinator",
    "SerializationError",
    "Serializer",
)
