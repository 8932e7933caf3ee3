"""Command line: ``python -m layercache demo`` (also installed as ``layercache``)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence

from ._demo import run_demo


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="layercache", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="watch layercache absorb a cache stampede")
    demo.add_argument(
        "--redis-url",
        help="a Redis server to use (default: an embedded in-process one)",
    )
    demo.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    demo.add_argument("--callers", type=int, default=1000, help="concurrent callers (default 1000)")
    demo.add_argument(
        "--origin-latency",
        type=float,
        default=0.05,
        help="seconds the simulated database takes per query (default 0.05)",
    )
    args = parser.parse_args(argv)
    if args.callers < 1:
        parser.error("--callers must be at least 1")
    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        parser.error("--backend trio needs trio: pip install 'layercache[trio]'")
    return run_demo(args.backend, args.callers, args.origin_latency, args.redis_url)


if __name__ == "__main__":
    sys.exit(main())
