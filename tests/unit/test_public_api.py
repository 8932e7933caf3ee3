"""The public surface: names, ``__all__``, and nothing private leaking out."""

from __future__ import annotations

import layercache
import layercache.testing

CONTRACT_NAMES = {
    "CacheStack",
    "MemoryLayer",
    "RedisLayer",
    "RedisInvalidationBus",
    "RedisSingleFlightCoordinator",
    "GracefulDegradation",
    "CircuitBreaker",
    "CacheError",
    "CacheClosedError",
    "LayerUnavailableError",
    "SerializationError",
}


def test_all_is_a_sorted_tuple_of_existing_names() -> None:
    assert isinstance(layercache.__all__, tuple)
    assert list(layercache.__all__) == sorted(layercache.__all__)
    for name in layercache.__all__:
        assert getattr(layercache, name) is not None


def test_all_lists_every_public_name_and_only_those() -> None:
    public = {name for name in vars(layercache) if not name.startswith("_")}
    # Submodules show up as attributes once imported; they are not API.
    public -= {"testing"}
    assert public == set(layercache.__all__)


def test_design_contract_names_are_exported() -> None:
    assert set(layercache.__all__) >= CONTRACT_NAMES


def test_exception_hierarchy() -> None:
    for name in ("CacheClosedError", "LayerUnavailableError", "SerializationError"):
        assert issubclass(getattr(layercache, name), layercache.CacheError)
    assert issubclass(layercache.CacheError, Exception)


def test_public_classes_claim_the_package_as_home() -> None:
    for name in layercache.__all__:
        assert getattr(layercache, name).__module__.startswith("layercache.")


def test_testing_all() -> None:
    assert layercache.testing.__all__ == (
        "EmbeddedRedis",
        "FakeClock",
        "FaultProxy",
        "LayerContract",
        "RedisServer",
        "RedisServerError",
        "ServerBinary",
        "bus_resubscribed",
        "invalidations_received",
        "loads_settled",
    )
