"""Where a Redis server is and how to log in: parsed from a ``redis://`` URL."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_PORT = 6379


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """A parsed Redis URL. ``path`` is set for ``unix://``, ``host``/``port`` otherwise."""

    host: str | None = "127.0.0.1"
    port: int = DEFAULT_PORT
    path: str | None = None
    tls: bool = False
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls_verify: bool = True

    def __repr__(self) -> str:
        # Never show the password.
        return f"<RedisAddress {self.display()}>"

    def display(self) -> str:
        login = f"{self.username or ''}:***@" if self.password is not None else ""
        if self.path is not None:
            return f"unix://{login}{self.path}?db={self.db}"
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{login}{self.host}:{self.port}/{self.db}"

    def server(self) -> tuple[str | None, int, str | None, bool]:
        """Which server this is, whatever the login and the database."""
        return (self.host, self.port, self.path, self.tls)

    def tls_hint(self) -> str:
        """What to add to a handshake that timed out or failed: a ``rediss://`` URL
        pointed at a plain port stalls in the TLS handshake (the server waits for a
        command), which says nothing by itself."""
        if not self.tls:
            return ""
        return " (rediss:// speaks TLS: is this port a TLS port? For a plain one, use redis://)"

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if not self.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def parse_redis_url(url: str) -> RedisAddress:
    """Parse ``redis://``, ``rediss://`` or ``unix://`` URLs, as redis-py does.

    ``redis://[[user]:password@]host[:port][/db]``, ``unix://[[user]:password@]/path?db=N``.
    ``rediss://...?ssl_cert_reqs=none`` turns certificate checks off (tests only).

    :raises ValueError: for anything else, saying what is wrong.
    """
    if not isinstance(url, str):
        raise TypeError(f"a Redis URL must be a str, not {type(url).__name__}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r} in {_redact(url)!r}")
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password is None and "password" in query:
        password = query["password"]
    db_text = query.get("db")
    if scheme == "unix":
        if not parts.path:
            raise ValueError(f"a unix:// Redis URL needs a socket path: {_redact(url)!r}")
        return RedisAddress(
            host=None,
            path=unquote(parts.path),
            username=username,
            password=password,
            db=_database(db_text or "0", url),
        )
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as error:
        raise ValueError(f"bad port in Redis URL {_redact(url)!r}") from error
    host = parts.hostname
    if not host:
        raise ValueError(f"a Redis URL needs a host: {_redact(url)!r}")
    path = parts.path.strip("/")
    verify = query.get("ssl_cert_reqs", "required").lower() not in ("none", "cert_none")
    return RedisAddress(
        host=host,
        port=port,
        tls=scheme == "rediss",
        username=username,
        password=password,
        db=_database(db_text or path or "0", url),
        tls_verify=verify,
    )


def _database(text: str, url: str) -> int:
    try:
        db = int(text)
    except ValueError:
        raise ValueError(f"bad database number {text!r} in Redis URL {_redact(url)!r}") from None
    if db < 0:
        raise ValueError(f"bad database number {db} in Redis URL {_redact(url)!r}")
    return db


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)
