"""The stop-signal handler takes no lock the main thread may hold; the supervisor stops on a flag a handler sets."""

from __future__ import annotations

import subprocess
import sys

from tests.process.helpers import REPO

# The main thread holds the children's lock (as while it starts, stops or forgets a child) when SIGTERM arrives:
# a handler that took that lock would wait for itself forever.
HANDLER_UNDER_LOCK = """
import signal, sys
from edgediff import processes
child = processes.ChildProcess([sys.executable, "-c", "import time; time.sleep(60)"])
with processes.stop_on_signals():
    try:
        with processes._children_lock:
            signal.raise_signal(signal.SIGTERM)
    except processes.Interrupted as exc:
        print("interrupted", exc.signum, flush=True)
print("child", child.wait(20), flush=True)
"""

SUPERVISOR_STOPPED_BY_A_HANDLER = """
import signal, sys, threading, os
from pathlib import Path
from services.stack.supervisor import HealthCheck, ServiceSpec, Supervisor
spec = ServiceSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], HealthCheck("http", "x"), 1)
sup = Supervisor([spec], Path(sys.argv[1]))
sup._start(sup.services[0])
signal.signal(signal.SIGUSR1, lambda *_: sup.request_stop())
threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1)).start()
sup.run(poll_s=0.05)
sup.stop_all()
print("stopped", flush=True)
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_a_stop_signal_while_the_main_thread_holds_the_children_lock() -> None:
    result = _python(HANDLER_UNDER_LOCK)  # before the fix: deadlock, then TimeoutExpired
    assert result.returncode == 0, result.stderr
    assert "interrupted 15" in result.stdout
    assert "child -15" in result.stdout  # the stop reached the child


def test_a_signal_handler_stops_the_supervisor(tmp_path) -> None:
    result = _python(SUPERVISOR_STOPPED_BY_A_HANDLER, str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stopped"
