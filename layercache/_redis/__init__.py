"""layercache's own Redis transport: anyio streams and the ``hiredis`` reply parser.

No existing client is both anyio-native and fast, so the layer actors talk to Redis
through this small transport: a :class:`~._connection.Connection` (connect, TLS,
AUTH/SELECT, send, parse), and a :class:`~._transport.Transport` that pipelines batches
over one connection, enforces deadlines and reconnects. ``redis.asyncio`` clients are
accepted through :class:`~._adapter.ClientTransport` with the same interface.
"""
