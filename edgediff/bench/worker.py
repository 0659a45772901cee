"""``python -m edgediff.bench.worker SPEC.json OUT_DIR``: measure one variant in a fresh process (see ``runner``).

The SIGTERM handler goes in first, before any heavy import: SIGTERM is both the bench's stop request and, on Linux,
the signal the kernel sends when the bench dies (``edgediff.processes``). An orphaned worker removes the bench's
temporary folder (``OUT_DIR``) before it exits, since no one else will.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time

from edgediff.processes import pid_alive


def bench_gone(parent: int, *, settle_s: float = 2.0) -> bool:
    """True when the process that started this worker has died or is dying.

    The death signal comes when the *thread* that started the worker exits: a SIGKILLed bench's other threads may
    still be exiting then, and this worker is parented to one of them for a moment (``getppid()`` still names the
    bench). So a bench whose main thread is already a zombie counts as gone; ``settle_s`` covers the time between
    the death signal and that state: microseconds on an idle machine, but over 0.2 s on a loaded one (the full suite
    on 2 cores left a SIGKILLed bench's folder behind at 0.2 s), while tearing down a large process's memory. A live
    bench's own stop request waits this long at most, well inside the bench's grace for its worker.
    """
    deadline = time.monotonic() + settle_s
    while os.getppid() == parent and pid_alive(parent):
        if time.monotonic() >= deadline:
            return False  # alive: a stop request from the bench, which removes its folder itself
        time.sleep(0.01)
    return True


def exit_on_sigterm(out_folder: str) -> None:
    """On SIGTERM exit at once (128 + 15); when the bench that started this worker is gone, remove ``out_folder``."""
    parent = os.getppid()

    def on_term(signum: int, _frame: object) -> None:
        if bench_gone(parent):  # PR_SET_PDEATHSIG: no one else will remove it
            shutil.rmtree(out_folder, ignore_errors=True)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python -m edgediff.bench.worker SPEC.json OUT_DIR", file=sys.stderr)
        sys.exit(2)
    exit_on_sigterm(sys.argv[2])
    from edgediff.bench.runner import worker_main

    sys.exit(worker_main(sys.argv[1], sys.argv[2]))
