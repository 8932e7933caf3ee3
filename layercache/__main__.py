"""Command line: ``python -m layercache demo`` (also installed as ``layercache``)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence

from ._demo import run_demo
from ._redis._address import parse_redis_url

# The help text is plain: argparse prints it as it is (no reST markup).
DESCRIPTION = 'The layercache command line (also run as "python -m layercache").'
DEMO_DESCRIPTION = (
    "Replay the five incidents layercache prevents (a stampede, Redis down, stale L1 "
    "across instances, TTL as the only invalidation tool, the database dying) and the "
    "trade-off a short TTL forces (a hot key across its expiry), measuring each without "
    "and with its protection, then print a summary table. Runs on an embedded "
    "Redis-protocol server unless --redis-url is given; the demo's keys go under a prefix "
    "of their own and are removed afterwards. About ten seconds."
)
EXIT_STATUS = """\
exit status:
  0  every check passed (a check that cannot run here, such as the fault proxy on a
     Unix socket, is reported as skipped)
  1  a check failed
  2  the Redis cannot be used (unreachable, refused, or no embedded server installed),
     or the arguments are wrong"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="layercache",
        description=DESCRIPTION,
        epilog=f"The demo's options: layercache demo --help\n\n{EXIT_STATUS}",
        formatter_class=_HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    demo = commands.add_parser(
        "demo",
        help="replay five cache incidents and the TTL trade-off, without and with layercache",
        description=DEMO_DESCRIPTION,
        epilog=EXIT_STATUS,
        formatter_class=_HelpFormatter,
    )
    demo.add_argument(
        "--redis-url",
        help="a Redis server to use, redis://, rediss:// or unix:// (default: an embedded, "
        "in-process one)",
    )
    demo.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="the event loop to run on (default: asyncio; trio needs layercache[trio])",
    )
    demo.add_argument(
        "--callers",
        type=int,
        default=1000,
        help="concurrent callers per instance in the stampede (default: 1000)",
    )
    demo.add_argument(
        "--origin-latency",
        type=float,
        default=0.05,
        help="seconds the simulated database takes per query in the stampede, 0 to 10 "
        "(default: 0.05)",
    )
    args = parser.parse_args(argv)
    # Every check below is about the demo's options: its own usage goes with the error.
    if args.callers < 1:
        demo.error("--callers must be at least 1")
    if not 0 <= args.origin_latency <= 10:
        demo.error("--origin-latency must be between 0 and 10 seconds")
    if args.redis_url is not None:
        try:
            parse_redis_url(args.redis_url)
        except ValueError as error:
            demo.error(f"--redis-url: {error}")
    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        demo.error("--backend trio needs trio: pip install 'layercache[trio]'")
    try:
        return run_demo(args.backend, args.callers, args.origin_latency, args.redis_url)
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, as command-line tools do,
        # and keep Python from failing again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps a one-line description or epilog to the terminal as usual, and keeps the
    lines of one written on several (the exit-status table) as they are."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


if __name__ == "__main__":
    sys.exit(main())
