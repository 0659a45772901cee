"""``python -m edgediff.bench.worker SPEC.json OUT_DIR``: measure one variant in a fresh process (see ``runner``).

Two signals end a worker, and the handlers go in first, before any heavy import:

- SIGTERM is the bench's stop request: the worker exits at once and the bench removes its temporary folder.
- ``PARENT_GONE_SIGNAL`` (SIGUSR1, ``edgediff.processes``) is the parent-death signal the bench asks the kernel
  for (``PR_SET_PDEATHSIG``): the bench died, even by SIGKILL, so no one else will remove the folder (``OUT_DIR``) and
  the worker removes it before it exits. A signal of its own says which case this is without guessing from the
  timing of the bench's death (an earlier version did, and lost under load).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys

from edgediff.processes import PARENT_GONE_SIGNAL


def exit_on_signals(out_folder: str) -> None:
    """Exit at once (128 + signal) on SIGTERM; on ``PARENT_GONE_SIGNAL`` remove ``out_folder`` first."""

    def on_stop(signum: int, _frame: object) -> None:
        os._exit(128 + signum)

    def on_bench_gone(signum: int, _frame: object) -> None:
        shutil.rmtree(out_folder, ignore_errors=True)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(PARENT_GONE_SIGNAL, on_bench_gone)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python -m edgediff.bench.worker SPEC.json OUT_DIR", file=sys.stderr)
        sys.exit(2)
    exit_on_signals(sys.argv[2])
    from edgediff.bench.runner import worker_main

    sys.exit(worker_main(sys.argv[1], sys.argv[2]))
