"""Errors of the Redis transport, and the one place foreign errors are translated."""

from __future__ import annotations

import ssl
from types import TracebackType

import anyio


class RedisError(Exception):
    """Something went wrong talking to Redis."""


class RedisConnectionError(RedisError):
    """The connection could not be made, broke, or timed out."""


class RedisConfigurationError(RedisError):
    """The server refused the configuration (password, database): retrying won't help."""


class RedisReplyError(RedisError):
    """The server answered a command with an error (e.g. OOM, NOSCRIPT, WRONGTYPE)."""


class map_connection_errors:
    """Translate socket, TLS and stream errors into :class:`RedisConnectionError`.

    A context manager saying what was being done (``what``). It keeps no state, so a
    connection makes its reading one once and enters it for every read.
    """

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is None:
            return
        what = self.what
        if isinstance(error, anyio.EndOfStream):
            raise RedisConnectionError(f"{what}: the server closed the connection") from error
        if isinstance(error, OSError | ssl.SSLError | anyio.BrokenResourceError):
            raise RedisConnectionError(f"{what}: {str(error) or type(error).__name__}") from error
        if isinstance(error, anyio.ClosedResourceError):
            raise RedisConnectionError(f"{what}: the connection was closed") from error
