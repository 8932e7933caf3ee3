"""Command line: ``python -m layercache demo`` (also installed as ``layercache``)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence

from ._demo import run_demo
from ._redis._address import parse_redis_url


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="layercache", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="replay four cache incidents, each without and with layercache",
        description=(
            "Replay the four incidents layercache prevents (a stampede, Redis down, stale "
            "L1 across instances, TTL as the only invalidation tool), measuring each "
            "without and with its protection. Exits non-zero if any check fails."
        ),
    )
    demo.add_argument(
        "--redis-url",
        help="a Redis server to use (default: an embedded in-process one)",
    )
    demo.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    demo.add_argument(
        "--callers", type=int, default=1000, help="concurrent callers in the stampede (1000)"
    )
    demo.add_argument(
        "--origin-latency",
        type=float,
        default=0.05,
        help="seconds the simulated database takes per query in the stampede (0.05)",
    )
    args = parser.parse_args(argv)
    if args.callers < 1:
        parser.error("--callers must be at least 1")
    if not 0 <= args.origin_latency <= 10:
        parser.error("--origin-latency must be between 0 and 10 seconds")
    if args.redis_url is not None:
        try:
            parse_redis_url(args.redis_url)
        except ValueError as error:
            parser.error(f"--redis-url: {error}")
    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        parser.error("--backend trio needs trio: pip install 'layercache[trio]'")
    try:
        return run_demo(args.backend, args.callers, args.origin_latency, args.redis_url)
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, as command-line tools do,
        # and keep Python from failing again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
