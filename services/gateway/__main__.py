"""``python -m services.gateway ...``: the same as ``edgediff serve ...`` (for subprocesses and containers)."""

from __future__ import annotations

import argparse
import logging
import sys

from edgediff.errors import EdgediffError
from services.gateway import serve_command


def main(argv: list[str] | None = None) -> int:
    """Parse ``edgediff serve`` arguments and serve; user errors print one line and return 2."""
    parser = argparse.ArgumentParser(prog="python -m services.gateway", description=serve_command.__doc__)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    serve_command.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return serve_command.run_from_args(args)
    except EdgediffError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
