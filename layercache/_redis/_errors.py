"""Errors of the Redis transport, and the one place foreign errors are translated."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from types import TracebackType

import anyio


class RedisError(Exception):
    """Something went wrong talking to Redis."""


class RedisConnectionError(RedisError):
    """The connection could not be made, broke, or timed out."""


class RedisConfigurationError(RedisError):
    """The server refused the configuration (password, database, ACL, a missing command
    such as ``EVALSHA``): retrying won't help until the configuration changes."""


class RedisReplyError(RedisError):
    """The server answered a command with an error (e.g. OOM, NOSCRIPT, WRONGTYPE)."""


REFUSALS = ("NOAUTH", "WRONGPASS", "NOPERM", "unknown command", "unknown subcommand")
"""How the error replies begin that no retry can cure: credentials missing or wrong, an
ACL that forbids the command, a server without the command (after an ``ERR``, which
redis-py strips)."""
SCRIPTING = frozenset({"EVAL", "EVALSHA", "SCRIPT"})


def is_refusal(reply: object) -> bool:
    """``reply`` is an error reply that no retry can cure (see :data:`REFUSALS`)."""
    return isinstance(reply, Exception) and str(reply).removeprefix("ERR ").startswith(REFUSALS)


def reply_error(reply: object, what: str = "Redis answered") -> RedisError:
    """The error an error reply stands for: a :class:`RedisConfigurationError` for a
    refusal (an ACL change at runtime: ``NOPERM``), a :class:`RedisReplyError` else."""
    if is_refusal(reply):
        return RedisConfigurationError(f"{what}: {reply}")
    return RedisReplyError(f"{what}: {reply}")


def refusal(where: str, command: Sequence[object], reply: object) -> RedisConfigurationError | None:
    """The configuration error an error reply to ``command`` stands for, if it is one
    (see :data:`REFUSALS`), saying what to do; None for any other reply."""
    if not is_refusal(reply):
        return None
    text = str(reply)
    name = str(command[0]).upper() if command else ""
    if text.startswith("NOAUTH"):
        return RedisConfigurationError(
            f"authentication required on {where}: {text} (put the password in the URL: "
            "redis://[user]:password@host)"
        )
    if name in SCRIPTING:
        return RedisConfigurationError(
            f"{where} cannot run the Lua scripts layercache needs ({name}: {text}); use "
            "Redis >= 6.2 or Valkey, allow @scripting in the ACL, or for fakeredis "
            "install its Lua extra: pip install 'fakeredis[lua]'"
        )
    return RedisConfigurationError(f"{where} refused {name}: {text}")


_CLIENT_REFUSALS = frozenset(
    {"AuthenticationError", "AuthenticationWrongNumberOfArgsError", "NoPermissionError"}
)
_CLIENT_LOST = frozenset({"ConnectionError", "TimeoutError", "BusyLoadingError"})


def client_error(error: Exception) -> RedisError | None:
    """What an exception from a ``client=`` (redis-py's, or its connection's) means:
    a refused login or database, or a client that cannot do what layercache needs,
    is a :class:`RedisConfigurationError`; a lost or refused connection a
    :class:`RedisConnectionError`; None for anything else."""
    kind = type(error).__name__
    text = f"{kind}: {error}"
    if kind in _CLIENT_REFUSALS or kind == "ResponseError":
        # A ResponseError raised, not returned as a reply: the connection's own
        # handshake (SELECT: "DB index is out of range") failed.
        return RedisConfigurationError(f"the client's server refused it: {text}")
    if isinstance(error, TypeError | AttributeError):
        return RedisConfigurationError(
            f"client= must be a redis.asyncio-compatible client (decode_responses=False), "
            f"and this one failed: {text}"
        )
    if kind in _CLIENT_LOST or isinstance(error, OSError):
        return RedisConnectionError(text)
    return None


def is_configuration_error(error: BaseException | None) -> bool:
    """``error`` is, or was caused by, a :class:`RedisConfigurationError`."""
    while error is not None:
        if isinstance(error, RedisConfigurationError):
            return True
        error = error.__cause__
    return False


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
