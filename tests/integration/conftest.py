"""Integration tests: the library against real servers (a redis-server the fixtures
start on a free loopback port, TLS, unix socket and password variants, the fault proxy
in front of them) and across processes.

When no server binary can be found or started, the fixtures raise, so the tests using
them fail instead of being skipped (DESIGN §6).
"""

from ..redis_fixtures import own_redis_server as own_redis_server
from ..redis_fixtures import password_redis_server as password_redis_server
from ..redis_fixtures import redis_server as redis_server
from ..redis_fixtures import redis_url as redis_url
from ..redis_fixtures import tls_redis_server as tls_redis_server
from ..redis_fixtures import unix_redis_server as unix_redis_server
