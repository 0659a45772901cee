"""``python -m edgediff.bench.worker SPEC.json OUT_DIR``: measure one variant in a fresh process (see ``runner``)."""

from __future__ import annotations

import sys

from edgediff.bench.runner import worker_main

if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python -m edgediff.bench.worker SPEC.json OUT_DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(worker_main(sys.argv[1], sys.argv[2]))
