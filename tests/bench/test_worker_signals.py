"""The bench worker tells the bench's stop request (SIGTERM) from the bench's death (its own parent-death signal).

The end-to-end case (a SIGKILLed bench) is tests/process/test_batch_commands.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgediff.processes import PARENT_GONE_SIGNAL

_WAITING_WORKER = """\
import sys, time
from edgediff.bench.worker import exit_on_signals
exit_on_signals(sys.argv[1])
print("ready", flush=True)
time.sleep(60)
"""


def _start(folder: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _WAITING_WORKER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize(("sig", "folder_removed"), [(signal.SIGTERM, False), (PARENT_GONE_SIGNAL, True)])
def test_only_the_bench_gone_signal_makes_the_worker_remove_the_folder(tmp_path: Path, sig: int,
                                                                        folder_removed: bool) -> None:
    folder = tmp_path / "edgediff-bench-x"
    (folder / "part").mkdir(parents=True)
    (folder / "part" / "weights.bin").write_bytes(b"0" * 1024)
    proc = _start(folder)
    started = time.monotonic()
    proc.send_signal(sig)
    assert proc.wait(timeout=10) == 128 + sig
    assert time.monotonic() - started < 5  # at once: no settling wait on a stop request
    assert folder.exists() is not folder_removed

