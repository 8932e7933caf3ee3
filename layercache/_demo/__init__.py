"""``python -m layercache demo``: the five incidents of a memory + Redis cache, replayed,
and the TTL trade-off.

1. stampede (:mod:`._stampede`), 2. Redis down (:mod:`._outage`), 3. stale L1 across
instances (:mod:`._stale`), 4. TTL as the only invalidation tool (:mod:`._tags`), 5. the
database dies (:mod:`._failsafe`), and 6. the TTL trade-off, a hot key across its expiry
(:mod:`._expiry`). Each scenario measures the incident without the protection and with
it, and derives its verdict from those measurements (:mod:`._report`); :func:`run_demo`
runs them all against an embedded Redis-protocol server or a given one (the last two
need none: they are about the origin), prints progress and a summary, and returns a
non-zero exit status if any scenario did not behave as promised.
"""

from ._run import run_demo as run_demo
