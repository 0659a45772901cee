"""Start and own child processes, and stop them (and this command) cleanly on SIGTERM, SIGINT and SIGHUP.

Every command that starts a process does it through ``ChildProcess`` (the bench worker, Locust, ``tritonserver``,
the stack's supervisor and services, the artifact-preparing child), and every command runs inside
``stop_on_signals()`` (``cli.main`` installs it):

- A stop signal (SIGTERM, SIGINT or SIGHUP) is passed on at once to every live child as its stop request
  (``ChildProcess.stop_signal``, SIGTERM by default: Locust then writes its statistics, ``tritonserver`` unloads its
  models), then raised in the main thread as ``Interrupted``. Unwinding runs every ``with`` block: each child gets a
  grace period and then SIGKILL, sent to its whole process group, and temporary directories are removed. A second
  stop signal sends SIGKILL to every child at once and raises again (Ctrl-C twice: leave now).
- On Linux a worker child (``dies_with_parent=True``, the default) gets ``PR_SET_PDEATHSIG``: the kernel sends it
  SIGTERM when the process that started it dies, even by SIGKILL (the OOM killer), so no orphan keeps working. The
  death signal follows the starting *thread*: start workers from the main thread (every caller here does). The
  services of a detached stack are the one exception (``dies_with_parent=False``): they outlive ``edgediff up
  --detach`` on purpose, and ``edgediff status`` / ``down`` find them through the state file.
- Each child runs in its own process group (``start_new_session``), so a Ctrl-C typed in the terminal reaches only
  the command, which decides what its children get, and a stop reaches a child's own children (Triton's Python
  stubs, Locust's workers).

Exit status (``Interrupted.exit_code``): 128 + the signal's number, the shell's convention: 130 after Ctrl-C
(SIGINT), 143 after SIGTERM, 129 after SIGHUP. Commands whose work was cut short (``bench``, ``loadtest``,
``export``...) exit so, after writing what they measured as a report marked incomplete. Long-running services
(``serve``, ``exporter``, ``triton``, foreground ``up``) treat a stop signal as their normal end and exit 0 after a
clean shutdown (what systemd and Docker expect of a service); they exit non-zero only when something failed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

from edgediff.errors import EdgediffError

logger = logging.getLogger(__name__)

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""The signals that ask a command to stop."""
DEFAULT_GRACE_S = 10.0
"""Seconds a child gets to exit after its stop signal before SIGKILL."""
_IS_LINUX = sys.platform.startswith("linux")


class Interrupted(KeyboardInterrupt):
    """A stop signal reached the command; raised in its main thread.

    A subclass of ``KeyboardInterrupt`` so that ``except Exception`` blocks (a variant that crashed, a failed
    request) never swallow it.

    Attributes:
        signum: The signal's number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def signal_name(self) -> str:
        """``SIGTERM``, ``SIGINT`` or ``SIGHUP``."""
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """128 + the signal's number (130 after Ctrl-C, 143 after SIGTERM, 129 after SIGHUP)."""
        return exit_code_for(self.signum)

    @property
    def reason(self) -> str:
        """One line for reports and logs, e.g. ``interrupted by SIGTERM``."""
        return f"interrupted by {self.signal_name}"


def exit_code_for(signum: int) -> int:
    """The shell's exit status of a command stopped by ``signum``: 128 + its number."""
    return 128 + int(signum)


# --- the children this process owns --------------------------------------------------------------------------------
_children: set[ChildProcess] = set()
_children_lock = threading.Lock()


def live_children() -> list[ChildProcess]:
    """The children started through ``ChildProcess`` that have not been stopped or released yet."""
    with _children_lock:
        return [child for child in _children if child.returncode is None]


PARENT_GONE_SIGNAL = signal.SIGUSR1
"""A parent-death signal (``ChildProcess(die_signal=...)``) for a worker that must tell its parent's death from a
stop request (SIGTERM): on it, the worker cleans up what its dead parent would have (the bench worker's folder)."""


def pid_alive(pid: int | None) -> bool:
    """True when a process with ``pid`` exists (and is not a zombie)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def process_identity(pid: int | None, cmdline: Sequence[str] | None = None) -> dict[str, Any] | None:
    """What tells this process apart from a later one given the same PID: its start time and command line.

    Args:
        pid: The process.
        cmdline: The command it was started with (default: its command line now). A ``ChildProcess`` passes its
            ``argv``: until the launcher has exec'd it, the live command line is the launcher's, which ends with it.

    Returns:
        ``{"start_ticks": clock ticks after boot, "cmdline": [...]}``, or None when the process is gone or there is
        no ``/proc`` (then no identity can be checked).
    """
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22 of proc(5): starttime
        if cmdline is None:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = [a.decode(errors="replace") for a in fh.read().split(b"\0")[:-1]]
    except (OSError, IndexError, ValueError):
        return None
    return {"start_ticks": start_ticks, "cmdline": list(cmdline)}


def is_same_process(pid: int | None, identity: Mapping[str, Any] | None) -> bool:
    """True when ``pid`` runs and is the process ``identity`` (``process_identity``) recorded.

    Same start time, and a command line that ends with the recorded one (the program compared by file name: a script
    runs as ``interpreter /abs/path/script ...``). False when either is unknown: never signal what cannot be told
    apart from another program (after a reboot, recorded PIDs belong to others).
    """
    if not identity or not pid_alive(pid):
        return False
    now = process_identity(pid)
    recorded = list(identity.get("cmdline") or [])
    if now is None or not recorded or now["start_ticks"] != identity.get("start_ticks"):
        return False
    tail = now["cmdline"][-len(recorded):]
    return len(tail) == len(recorded) and tail[1:] == recorded[1:] and (
        os.path.basename(tail[0]) == os.path.basename(recorded[0]))


# The child is started through a tiny Python launcher, never with a ``preexec_fn``: Python code between fork and exec
# is unsafe in a threaded process (CPython's documentation says so; gRPC's fork handlers run in such a child and
# crashed a tritonserver start with SIGSEGV before it wrote a byte). Without ``preexec_fn`` CPython starts the
# launcher by vfork + exec, and the launcher, a fresh single-threaded process, sets the death signal, unblocks the
# stop signals (blocked in the parent around the start) and execs the program (same pid, same process group).
_LAUNCHER = """\
import ctypes, os, signal, sys
die_signal, parent_pid, stop_signals, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if die_signal:
    ctypes.CDLL(None, use_errno=True).prctl(1, die_signal, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before prctl: the death signal will never come
        os.kill(os.getpid(), die_signal)
for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # this interpreter ignores them; the program starts with the defaults
    signal.signal(sig, signal.SIG_DFL)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {int(sig) for sig in stop_signals.split(",")})
try:
    os.execv(path, sys.argv[5:])
except OSError as exc:
    sys.stderr.write(f"cannot start {path}: {exc.strerror}\\n")
    os._exit(127)
"""


def _launcher_argv(argv: list[str], *, die_signal: int | None, env: Mapping[str, str] | None,
                   cwd: str | os.PathLike[str] | None) -> list[str] | None:
    """``argv`` behind the launcher (Linux with a Python executable), else None (started as it is).

    Raises:
        FileNotFoundError, PermissionError: the program cannot be started (what ``subprocess.Popen`` raises).
    """
    if not _IS_LINUX or not sys.executable:
        return None
    program = argv[0]
    if os.sep in program:
        path = program if os.path.isabs(program) or cwd is None else os.path.join(os.fspath(cwd), program)
    else:
        path = shutil.which(program, path=os.pathsep.join(os.get_exec_path(env))) or ""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    if not os.access(path, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)
    stop_signals = ",".join(str(int(sig)) for sig in STOP_SIGNALS)
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(int(die_signal or 0)), str(os.getpid()), stop_signals,
            os.path.abspath(path), *argv]


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Block the stop signals in this thread while a child is forked and registered (no untracked child)."""
    if not _IS_LINUX:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class ChildProcess:
    """A child process this command owns: started in its own process group, stopped with a grace period.

    Use it as a context manager (``with ChildProcess([...]) as child:``): leaving the block in any way, an
    ``Interrupted`` included, stops the child (``stop``). ``release()`` hands a child over to no one (a detached
    stack's supervisor): it is then neither signalled nor stopped by this process.

    Args:
        argv: The command.
        name: What logs call it (default: the program's name).
        dies_with_parent: On Linux, the kernel sends ``die_signal`` to the child when this process dies (a worker);
            False for processes meant to outlive it (a detached stack).
        die_signal: The parent-death signal (SIGTERM: the child may clean up; SIGKILL: it may not).
        stop_signal: What the child gets when it is asked to stop (whichever stop signal this process received).
        grace_s: Seconds between the stop signal and SIGKILL.
        stdin, stdout, stderr: As for ``subprocess.Popen`` (stdin defaults to ``/dev/null``).
        env: The child's whole environment (default: this process's).
        cwd: Its working directory.
        text: Text-mode pipes.

    Raises:
        OSError: the program cannot be started.
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        name: str | None = None,
        dies_with_parent: bool = True,
        die_signal: int = signal.SIGTERM,
        stop_signal: int = signal.SIGTERM,
        grace_s: float = DEFAULT_GRACE_S,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        text: bool = False,
    ) -> None:
        self.argv = [os.fspath(a) for a in argv]
        self.name = name or Path(self.argv[0]).name
        self.stop_signal = int(stop_signal)
        self.grace_s = float(grace_s)
        self.dies_with_parent = dies_with_parent
        self._stop_requested = False
        launched = _launcher_argv(self.argv, die_signal=die_signal if dies_with_parent else None, env=env, cwd=cwd)
        with _stop_signals_blocked() if launched is not None else contextlib.nullcontext():
            self.popen: subprocess.Popen[Any] = subprocess.Popen(
                launched or self.argv, stdin=stdin, stdout=stdout, stderr=stderr,
                env=dict(env) if env is not None else None, cwd=cwd, text=text, start_new_session=True,
            )
            with _children_lock:
                _children.add(self)
        logger.debug("started %s (pid %d)", self.name, self.popen.pid)

    # --- state -------------------------------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        """The child's process id (also its process group's id)."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """Its exit status once reaped (negative: killed by that signal), else None."""
        return self.popen.returncode

    def poll(self) -> int | None:
        """Its exit status if it exited, else None."""
        return self.popen.poll()

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for it to exit; its exit status, or None while it still runs after ``timeout_s``."""
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    # --- signals -----------------------------------------------------------------------------------------------
    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the child's process group (its own children included); gone groups are ignored."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def request_stop(self) -> None:
        """Send the stop signal to the child alone, once, if it still runs (it stops its own children).

        Once only: a second SIGTERM makes some servers skip their clean shutdown.
        """
        if self.popen.poll() is None and not self._stop_requested:
            self._stop_requested = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                self.popen.send_signal(self.stop_signal)

    def stop(self, grace_s: float | None = None) -> bool:
        """Stop signal, ``grace_s`` to exit, then SIGKILL to the whole group (stragglers too); idempotent.

        Returns:
            True when the child was still running (it had to be signalled).
        """
        grace = self.grace_s if grace_s is None else grace_s
        was_running = self.popen.poll() is None
        try:
            if was_running:
                logger.info("stopping %s (pid %d)", self.name, self.pid)
                self.request_stop()
                if self.wait(grace) is None:
                    logger.warning("%s (pid %d) still runs %.0f s after its stop signal: SIGKILL", self.name,
                                   self.pid, grace)
            self.signal_group(signal.SIGKILL)  # the child if it ignored the stop, and whatever is left of its group
            self.popen.wait()
        finally:
            self._forget()
        return was_running

    def kill(self) -> None:
        """SIGKILL to the whole group now, and reap the child."""
        self.signal_group(signal.SIGKILL)
        self.popen.wait()
        self._forget()

    def release(self) -> None:
        """Stop owning the child: it is no longer signalled or stopped by this process (a detached stack)."""
        self._forget()

    def _forget(self) -> None:
        with _children_lock:
            _children.discard(self)

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with _children_lock:
            owned = self in _children
        if owned:
            self.stop()


# --- this command's stop signals -------------------------------------------------------------------------------------
class _SignalState:
    def __init__(self) -> None:
        self.received: list[int] = []


_state = _SignalState()


def _on_stop_signal(signum: int, _frame: FrameType | None) -> None:
    # A handler runs in the main thread between two bytecodes, possibly while that thread holds _children_lock
    # (starting, stopping or forgetting a child): taking the lock here would deadlock. tuple() copies the set in one
    # C call under the GIL, so no other thread changes it meanwhile; nothing in here takes a lock (Popen.poll() only
    # tries its own, without blocking).
    first = not _state.received
    _state.received.append(signum)
    for child in tuple(_children):
        if child.returncode is not None:
            continue
        if first:
            child.request_stop()
        else:  # asked twice: no more grace
            child.signal_group(signal.SIGKILL)
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals(signals: Sequence[int] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block, a stop signal is passed on to every live child and raised as ``Interrupted``.

    Installed by ``cli.main`` around every command; a no-op outside the main thread (Python delivers signals to
    the main thread only). The previous handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _on_stop_signal) for sig in signals}
    _state.received.clear()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_child(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout_s: float | None = None,
    capture: bool = False,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """Run a worker child to the end, like ``subprocess.run``, but owned: stopped with this process or on timeout.

    Args:
        argv: The command.
        timeout_s: Stop it (stop signal, grace, SIGKILL) and raise ``subprocess.TimeoutExpired`` after this long.
        capture: Capture stdout and stderr as text (else they are inherited, or as ``kwargs`` say).
        **kwargs: More ``ChildProcess`` arguments (``env``, ``cwd``, ``stdout``, ``stderr``, ``name``...).

    Raises:
        subprocess.TimeoutExpired: it ran past ``timeout_s`` (it was stopped).
        Interrupted: a stop signal arrived (it was stopped).
    """
    if capture:
        kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with ChildProcess(argv, **kwargs) as child:
        try:
            out, err = child.popen.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.stop()
            raise
        return subprocess.CompletedProcess(child.argv, child.popen.returncode, out, err)


def detach_until_ready(argv: Sequence[str], log_path: Path, ready: Callable[[], bool], timeout_s: float, *,
                       name: str, env: Mapping[str, str] | None = None, poll_s: float = 1.0) -> int:
    """Start a process that outlives this one (its own session, no parent-death signal) and wait until it is ready.

    Owned until ``ready()`` holds: a stop signal or the timeout stops it (a grace of 60 s: it stops what it started).

    Args:
        argv: The command.
        log_path: Its stdout and stderr (appended).
        ready: Polled every ``poll_s`` seconds.
        timeout_s: Longest wait, in seconds.
        name: What messages call it.
        env: Its environment (default: this process's).
        poll_s: Seconds between two polls.

    Returns:
        Its PID, once released.

    Raises:
        EdgediffError: it exited first (the last lines of its log go to stderr) or was not ready in time.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        child = ChildProcess(argv, name=name, stdout=log, stderr=subprocess.STDOUT, env=env, dies_with_parent=False,
                             grace_s=60.0)
    with child:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = child.poll()
            if code is not None:
                tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-8:]
                print("\n".join(tail), file=sys.stderr)
                raise EdgediffError(f"the {name} exited with code {code} while starting (log: {log_path})")
            if ready():
                child.release()  # from now on it runs on its own
                return child.pid
            time.sleep(poll_s)
    raise EdgediffError(f"the {name} was not ready after {timeout_s:.0f} s (log: {log_path}); it was stopped")


@contextlib.contextmanager
def hangup_means_terminate() -> Iterator[None]:
    """Within the block, SIGHUP is turned into SIGTERM to this process.

    For services that handle SIGTERM and SIGINT themselves, gracefully (the gateway, the exporter). A no-op outside
    the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGHUP, lambda _signum, _frame: signal.raise_signal(signal.SIGTERM))
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)
