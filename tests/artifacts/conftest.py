"""Checks of what users read and run: the docs pages and their code blocks, the
examples, the demo's command line and the benchmark report, run as a user would
(subprocesses, the embedded server, a real redis-server from tests/redis_fixtures.py).
"""

from ..redis_fixtures import own_redis_server as own_redis_server
from ..redis_fixtures import password_redis_server as password_redis_server
from ..redis_fixtures import redis_server as redis_server
from ..redis_fixtures import redis_url as redis_url
from ..redis_fixtures import tls_redis_server as tls_redis_server
from ..redis_fixtures import unix_redis_server as unix_redis_server
