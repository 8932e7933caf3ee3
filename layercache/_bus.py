"""``RedisInvalidationBus``: keeps every stack's memory layers consistent across instances.

Each stack publishes what it invalidated (keys, a tag, or everything) on a Redis pub/sub
channel; every other stack on the channel drops the same entries from its local layers.
Messages carry the sender's origin id, the operation, keys and tags — never values.

Wire format (bounded to :data:`MAX_MESSAGE` bytes)::

    b"LCI1" b"U" <json body>                       unsigned
    b"LCI1" b"S" <HMAC-SHA256(secret, b"LCI1S" + body)> <json body>   signed

With a ``secret``, unsigned or forged messages are dropped and counted; signatures are
compared in constant time. A message edited in transit no longer matches its signature.

The body is ``{"o": origin, "op": operation, "k": keys, "t": tag}``. The operations
are ``keys``, ``tag`` and ``clear`` (drops), and ``expire-keys`` and ``expire-tag``
(mark stale, keeping the stale windows), which travel as their drop (``"op": "keys"``
or ``"tag"``) plus ``"m": "expire"``: an instance of the release before them, which
rejects an operation it does not know and ignores fields it does not read, drops those
keys (or that tag) instead, the safe way to fall behind. Likewise a mode this release
does not know is read as its drop.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._redis._address import RedisAddress
from ._redis._endpoint import RedisEndpoint
from ._redis_layer import DEFAULT_TIMEOUT
from ._serializers import JsonSerializer
from ._validation import MAX_KEY_LENGTH, check_duration, check_key, check_tag

_JSON = JsonSerializer()
"""The messages' JSON (orjson when installed): what the values use too."""
MAGIC = b"LCI1"
MAX_MESSAGE = 64 * 1024
"""Largest message sent or accepted, in bytes; longer key lists are split."""
_SIGNED, _UNSIGNED = ord("S"), ord("U")
_KIND = len(MAGIC)
"""Where the kind byte (signed or not) is; the body, or the signature, follows it."""
_BODY = _KIND + 1
_SIGNATURE = 32
_SIGNED_HEADER, _UNSIGNED_HEADER = MAGIC + b"S", MAGIC + b"U"
OPERATIONS = ("keys", "tag", "clear", "expire-keys", "expire-tag")
_AS_DROP = {"expire-keys": ("keys", "expire"), "expire-tag": ("tag", "expire")}
"""How an operation that a previous release does not know travels: its drop, a mode."""
_WIRE_OPERATIONS = ("keys", "tag", "clear")
_TAGGED = ("tag", "expire-tag")


class Rejected(Exception):
    """A bus message that is not acted on; ``reason`` names why (for the counters)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class BusMessage:
    origin: str
    op: str
    keys: tuple[str, ...] = ()
    tag: str | None = None


def encode(message: BusMessage, secret: bytes | None) -> bytes:
    # Checked fields only (str, a list of checked keys, a tag or None): no walk needed.
    op, mode = _AS_DROP.get(message.op, (message.op, None))
    fields = {"o": message.origin, "op": op, "k": list(message.keys), "t": message.tag}
    if mode is not None:
        fields["m"] = mode
    body = _JSON.dumps_checked(fields)
    if secret is None:
        data = _UNSIGNED_HEADER + body
    else:
        data = _SIGNED_HEADER + _sign(secret, body) + body
    if len(data) > MAX_MESSAGE:
        raise ValueError("bus message too large; split the keys")  # split_keys prevents it
    return data


def origin_marker(origin: str) -> bytes:
    """How the body of every message :func:`encode` makes for ``origin`` begins."""
    return _JSON.dumps({"o": origin})[:-1] + b","


_BUDGET = MAX_MESSAGE - 512
"""Room for keys in one message (the rest: header, signature, origin, punctuation)."""
_ALWAYS_FIT = _BUDGET // (MAX_KEY_LENGTH * 6 + 8)
"""How many keys fit in one message however long (checked) and escaped they are."""


def split_keys(origin: str, keys: Sequence[str], op: str = "keys") -> list[BusMessage]:
    """Messages of operation ``op`` for ``keys`` (checked: at most
    :data:`MAX_KEY_LENGTH` long), each within :data:`MAX_MESSAGE` once encoded."""
    if 0 < len(keys) <= _ALWAYS_FIT:
        return [BusMessage(origin, op, tuple(keys))]
    budget = _BUDGET
    messages: list[BusMessage] = []
    chunk: list[str] = []
    size = 0
    for key in keys:
        # Printable ASCII costs at most 2 bytes a character (a quote or backslash is
        # escaped); anything else at most 6 (a control character's escape; UTF-8 is less).
        cost = len(key) * 2 + 8 if key.isascii() and key.isprintable() else len(key) * 6 + 8
        if chunk and size + cost > budget:
            messages.append(BusMessage(origin, op, tuple(chunk)))
            chunk, size = [], 0
        chunk.append(key)
        size += cost
    if chunk:
        messages.append(BusMessage(origin, op, tuple(chunk)))
    return messages


def decode(data: object, secret: bytes | None, own: bytes = b"") -> BusMessage | None:
    """Parse and check a message from the channel; None if its body begins with ``own``
    (see :func:`origin_marker`): a stack skips its own messages without decoding them. (A
    forgery claiming to be ours is skipped as well, which is what rejecting it does.)

    :raises Rejected: oversized, malformed, unsigned or forged (with a secret).
    """
    if type(data) is not bytes:
        raise Rejected("malformed")
    if len(data) > MAX_MESSAGE:
        raise Rejected("oversized")
    if len(data) <= _KIND or not data.startswith(MAGIC):
        raise Rejected("malformed")
    kind = data[_KIND]
    start = _BODY + _SIGNATURE if kind == _SIGNED else _BODY
    if own and data.startswith(own, start):
        return None
    body = data[start:]
    if kind == _SIGNED:
        if secret is not None and not hmac.compare_digest(data[_BODY:start], _sign(secret, body)):
            raise Rejected("forged")
    elif kind == _UNSIGNED:
        if secret is not None:
            raise Rejected("unsigned")
    else:
        raise Rejected("malformed")
    try:
        fields = _JSON.loads(body)
        if type(fields) is not dict:
            raise Rejected("malformed")
        origin, op, keys, tag = fields["o"], fields["op"], fields["k"], fields["t"]
        if type(origin) is not str or op not in _WIRE_OPERATIONS or type(keys) is not list:
            raise Rejected("malformed")
        if fields.get("m") == "expire" and op != "clear":
            op = "expire-" + op
        checked = tuple(map(check_key, keys))
        if op in _TAGGED:
            tag = check_tag(tag)
        elif tag is not None:
            raise Rejected("malformed")
    except Rejected:
        raise
    except Exception:  # anything the JSON holds, even nesting deep enough to recurse
        raise Rejected("malformed") from None
    return BusMessage(origin, op, checked, tag)


def _sign(secret: bytes, body: bytes) -> bytes:
    return hmac.digest(secret, _SIGNED_HEADER + body, hashlib.sha256)


class RedisInvalidationBus:
    """Cross-instance invalidation over Redis pub/sub, for ``CacheStack(invalidation_bus=)``.

    :param url: ``redis://``, ``rediss://`` or ``unix://`` (asyncio and trio).
    :param client: instead of ``url``, a ``redis.asyncio``-compatible client
        (``decode_responses=False``); asyncio only, a ``TypeError`` under trio.
    :param channel: the pub/sub channel; every stack on it invalidates the others.
    :param secret: if given (bytes or str), messages are HMAC-SHA256 signed and unsigned
        or forged ones are dropped (and counted). Give every instance the same secret.
    :param timeout: seconds a publish or the subscription handshake may take.
    :param keepalive: seconds between PINGs on the subscription, which detect a silent
        network; a subscription that stops answering is re-established, and the local
        layers are cleared since messages may have been missed.
    """

    def __init__(
        self,
        url: str | None = None,
        channel: str = "layercache:invalidation",
        secret: bytes | str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        keepalive: float = 10.0,
        ssl_context: Any = None,
        client: Any = None,
    ) -> None:
        self.endpoint = RedisEndpoint(
            "RedisInvalidationBus", url, client, timeout=timeout, ssl_context=ssl_context
        )
        self.address: RedisAddress | None = self.endpoint.address
        self.client = client
        self.timeout = self.endpoint.timeout
        if not isinstance(channel, str) or not channel:
            raise ValueError("channel must be a non-empty str")
        self.channel = channel
        if isinstance(secret, str):
            secret = secret.encode()
        if secret is not None and (not isinstance(secret, bytes) or not secret):
            raise ValueError("secret must be non-empty bytes or str")
        self.secret: bytes | None = secret
        self.keepalive = check_duration(keepalive, "keepalive")
        self._in_use = False

    def __repr__(self) -> str:
        signed = "signed" if self.secret else "unsigned"
        where = self.endpoint.display()
        return f"<RedisInvalidationBus {where} {self.channel!r} {signed}>"

    def attach(self) -> None:
        """Give the bus to a stack that is starting (the stack calls it).

        :raises RuntimeError: the bus already serves another stack; give each stack
            its own ``RedisInvalidationBus``.
        """
        if self._in_use:
            raise RuntimeError("this invalidation bus is already in use by another stack")
        self._in_use = True

    def detach(self) -> None:
        """Let go of the stack (called when it has stopped)."""
        self._in_use = False
