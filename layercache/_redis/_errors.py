"""Errors of the Redis transport, and the one place foreign errors are translated."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import anyio


class RedisError(Exception):
    """Something went wrong talking to Redis."""


class RedisConnectionError(RedisError):
    """The connection could not be made, broke, or timed out."""


class RedisConfigurationError(RedisError):
    """The server refused the configuration (password, database): retrying won't help."""


class RedisReplyError(RedisError):
    """The server answered a command with an error (e.g. OOM, NOSCRIPT, WRONGTYPE)."""


@contextmanager
def map_connection_errors(what: str) -> Iterator[None]:
    """Translate socket, TLS and stream errors into :class:`RedisConnectionError`."""
    try:
        yield
    except anyio.EndOfStream as error:
        raise RedisConnectionError(f"{what}: the server closed the connection") from error
    except (OSError, ssl.SSLError, anyio.BrokenResourceError) as error:
        raise RedisConnectionError(f"{what}: {str(error) or type(error).__name__}") from error
    except anyio.ClosedResourceError as error:
        raise RedisConnectionError(f"{what}: the connection was closed") from error
