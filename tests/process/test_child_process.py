"""``edgediff.processes``: children stopped with a grace period, dying with their parent, stop signals as exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from edgediff.processes import ChildProcess, Interrupted, exit_code_for, live_children, run_child
from tests.process.helpers import REPO, still_running

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and PR_SET_PDEATHSIG")

IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); " \
                  "time.sleep(120)"


def test_exit_codes_follow_the_shell_convention() -> None:
    assert (exit_code_for(signal.SIGINT), exit_code_for(signal.SIGTERM), exit_code_for(signal.SIGHUP)) == \
           (130, 143, 129)
    exc = Interrupted(signal.SIGTERM)
    assert isinstance(exc, KeyboardInterrupt) and not isinstance(exc, Exception)
    assert (exc.exit_code, exc.signal_name, exc.reason) == (143, "SIGTERM", "interrupted by SIGTERM")


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    with ChildProcess([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE, grace_s=0.5) as child:
        assert child.popen.stdout.readline() == b"ready\n"  # its SIGTERM handler is in place
        started = time.monotonic()
        assert child.stop() is True
        waited = time.monotonic() - started
    assert child.returncode == -signal.SIGKILL
    assert 0.4 < waited < 10, waited
    assert child not in live_children()


def test_stop_reaches_the_childs_own_children() -> None:
    script = textwrap.dedent(f"""
        import subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", {IGNORES_SIGTERM!r}])
        print(grandchild.pid, flush=True)
        time.sleep(120)
    """)
    child = ChildProcess([sys.executable, "-c", script], stdout=subprocess.PIPE, grace_s=5)
    grandchild = psutil.Process(int(child.popen.stdout.readline()))
    child.stop()
    assert still_running([grandchild]) == []


def test_leaving_the_block_by_an_exception_stops_the_child() -> None:
    with pytest.raises(RuntimeError), ChildProcess([sys.executable, "-c", "import time; time.sleep(120)"]) as child:
        raise RuntimeError("boom")
    assert child.returncode == -signal.SIGTERM


def test_no_python_code_runs_between_fork_and_exec(tmp_path: Path) -> None:
    """No ``preexec_fn``: a threaded parent's at-fork handlers (gRPC's crashed a tritonserver start) never run."""
    marker = tmp_path / "forked"
    os.register_at_fork(after_in_child=lambda: marker.touch())
    with ChildProcess(["sleep", "30"]) as child:
        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).name() != "sleep" and time.monotonic() < deadline:
            time.sleep(0.02)  # still the launcher
        status = dict(line.split(":", 1) for line in Path(f"/proc/{child.pid}/status").read_text().splitlines())
        assert psutil.Process(child.pid).cmdline() == ["sleep", "30"]
    assert not marker.exists()
    blocked, ignored = int(status["SigBlk"], 16), int(status["SigIgn"], 16)
    assert [sig for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) if blocked & (1 << (sig - 1))] == []
    assert [sig for sig in (signal.SIGPIPE, signal.SIGXFSZ) if ignored & (1 << (sig - 1))] == []  # as Popen leaves them


def test_a_program_that_cannot_start_raises_as_popen_does(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ChildProcess(["edgediff-no-such-program"])
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(PermissionError):
        ChildProcess([str(script)])
    assert live_children() == []


def test_run_child_stops_the_child_on_timeout() -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        run_child([sys.executable, "-c", "import time; time.sleep(120)"], timeout_s=0.5, capture=True)
    assert live_children() == []
    done = run_child([sys.executable, "-c", "print('hi')"], capture=True)
    assert (done.returncode, done.stdout) == (0, "hi\n")


PARENT = textwrap.dedent("""
    import sys, time
    from edgediff.processes import ChildProcess
    child = ChildProcess([sys.executable, "-c", "import time; time.sleep(120)"], dies_with_parent={dies})
    print(child.pid, flush=True)
    time.sleep(120)
""")


@pytest.mark.parametrize("dies", [True, False])
def test_a_worker_dies_with_its_sigkilled_parent_a_service_does_not(dies: bool) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(dies=dies)], stdout=subprocess.PIPE, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    child = psutil.Process(int(parent.stdout.readline()))
    try:
        parent.kill()  # what the OOM killer does: no handler runs
        parent.wait(timeout=10)
        left = still_running([child], timeout_s=5 if dies else 1)
        assert bool(left) is not dies, left
    finally:
        if child.is_running():
            child.kill()


SIGNALLED = textwrap.dedent("""
    import sys, tempfile, time
    from pathlib import Path
    from edgediff.processes import ChildProcess, stop_on_signals
    with stop_on_signals():
        try:
            with tempfile.TemporaryDirectory(dir=sys.argv[1]) as tmp, \\
                    ChildProcess([sys.executable, "-c", "import time; time.sleep(120)"]) as child:
                print(child.pid, flush=True)
                child.wait()
        except KeyboardInterrupt as exc:
            sys.exit(exc.exit_code)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_stops_the_children_removes_temporary_folders_and_sets_the_exit_code(
    sig: int, tmp_path: Path
) -> None:
    parent = subprocess.Popen([sys.executable, "-c", SIGNALLED, str(tmp_path)], stdout=subprocess.PIPE, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    child = psutil.Process(int(parent.stdout.readline()))
    parent.send_signal(sig)
    assert parent.wait(timeout=20) == 128 + sig
    assert still_running([child]) == []
    assert list(tmp_path.iterdir()) == []
