"""Start and stop a real ``tritonserver`` over a model repository.

The binary is the system ``tritonserver`` when one is on ``PATH`` (NGC containers, ``/opt/tritonserver``), else the
one bundled in the ``nvidia-pytriton`` wheel (Triton 2.51 with the Python backend only). For the bundle, the Python
backend and the stub for this interpreter's version are assembled once into a cache folder (keyed by the wheel's
version), the interpreter's ``LIBDIR`` goes first on ``LD_LIBRARY_PATH`` (the stub links ``libpython3.X``), then the
wheel's ``nvidia_pytriton.libs``; the venv's ``bin`` goes first on ``PATH`` and the source tree plus site-packages on
``PYTHONPATH``, so the Python models import edgediff, torch, onnxruntime and openvino from this environment.

The server runs in its own process group, binds loopback by default, and is ready when ``/v2/health/ready`` answers
200. Its output goes to a log file; when it fails to start, ``TritonStartError`` carries Triton's own error lines.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from edgediff.artifacts.cache import cache_root
from edgediff.constants import DEFAULT_HOST, TRITON_GRPC_PORT, TRITON_HTTP_PORT, TRITON_METRICS_PORT
from edgediff.errors import BackendMissingError, EdgediffError, InvalidArgumentError
from edgediff.processes import ChildProcess
from exporters.manifest import repository_problems, unfinished_export

logger = logging.getLogger(__name__)

MODEL_CONTROL_MODES = ("none", "explicit", "poll")
PYTRITON_DIST = "nvidia-pytriton"
SYSTEM_LOCATIONS = (Path("/opt/tritonserver/bin/tritonserver"),)
_ERROR_LINE = re.compile(r"^E\d{4} |error:|failed to load|Internal:|Invalid argument|Not found:|Unavailable:",
                         re.IGNORECASE)
_NOISE = ("CudaDriverHelper", "NVML", "DCGM", "pinned memory")
"""Error-looking lines every CPU-only start prints (no GPU driver): not the reason a start failed."""
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


class TritonStartError(EdgediffError):
    """``tritonserver`` did not become ready; the message includes Triton's own error lines."""


def _pytriton_root() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _bundled_binary() -> Path | None:
    root = _pytriton_root()
    binary = root / "tritonserver" / "bin" / "tritonserver" if root else None
    return binary if binary is not None and binary.is_file() else None


def _system_binary() -> Path | None:
    found = shutil.which("tritonserver")
    if found:
        return Path(found)
    return next((p for p in SYSTEM_LOCATIONS if p.is_file() and os.access(p, os.X_OK)), None)


def find_tritonserver() -> Path:
    """The ``tritonserver`` binary: the system one on ``PATH`` first, else the pytriton bundle.

    Raises:
        BackendMissingError: neither is installed; the message says how to get one.
    """
    binary = _system_binary() or _bundled_binary()
    if binary is None:
        raise BackendMissingError(
            "tritonserver not found: install the bundled server with pip install 'edgediff[triton]' "
            "(nvidia-pytriton==0.7.0, x86_64/aarch64 Linux), or run inside an NGC tritonserver container"
        )
    return binary


def is_bundled(binary: Path) -> bool:
    """True when ``binary`` is the one shipped in the nvidia-pytriton wheel."""
    root = _pytriton_root()
    return root is not None and binary.resolve().is_relative_to(root.resolve())


def bundled_backend_dir() -> Path:
    """A backend folder for the bundled server: ``python/`` with the backend library and this Python's stub.

    Assembled once per wheel version and Python version under the edgediff cache, atomically (built beside, then
    renamed), so concurrent first starts do not see a half-copied stub.
    """
    root = _pytriton_root()
    if root is None:
        raise BackendMissingError("nvidia-pytriton is not installed: pip install 'edgediff[triton]'")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "tritonserver" / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not stub.is_file():
        raise BackendMissingError(f"nvidia-pytriton has no Python backend stub for Python {py} ({stub})")
    version = importlib.metadata.version(PYTRITON_DIST)
    folder = cache_root() / "tritonserver-backends" / f"pytriton-{version}-py{py}"
    if (folder / "python" / "triton_python_backend_stub").is_file():
        return folder
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    source = root / "tritonserver" / "backends" / "python"
    shutil.copytree(source, tmp / "python", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
    try:
        tmp.rename(folder)
    except OSError:  # another process assembled it first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def server_environment(bundled: bool) -> dict[str, str]:
    """The environment ``tritonserver`` (and the Python stubs it spawns) run with."""
    env = dict(os.environ)

    def prepend(key: str, *paths: str | Path) -> None:
        parts = [str(p) for p in paths if p] + [p for p in env.get(key, "").split(os.pathsep) if p]
        env[key] = os.pathsep.join(dict.fromkeys(parts))

    site_packages = sysconfig.get_paths()["purelib"]
    prepend("PYTHONPATH", _SOURCE_ROOT, site_packages)
    if bundled:
        root = _pytriton_root()
        libs = root.parent / "nvidia_pytriton.libs" if root else None
        prepend("LD_LIBRARY_PATH", sysconfig.get_config_var("LIBDIR") or "", libs or "")
        prepend("PATH", Path(sys.executable).parent)
    return env


def error_lines(log: str, limit: int = 20) -> list[str]:
    """Triton's error lines in ``log`` (glog ``E`` lines, ``error:``, ``failed to load``), else its last lines."""
    lines = [line.rstrip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if _ERROR_LINE.search(line) and not any(n in line for n in _NOISE)]
    return (errors or lines)[-limit:]


class TritonServer:
    """A ``tritonserver`` process over ``repo``.

    Args:
        repo: The model repository.
        http_port: HTTP/REST port.
        grpc_port: gRPC port.
        metrics_port: Prometheus metrics port.
        host: Address all three bind (loopback by default).
        metrics_host: Address the metrics port binds instead of ``host`` (a pod's Triton serves inference on
            loopback, to its gateway alone, and metrics to Prometheus).
        model_control: ``none`` (load everything at start), ``explicit`` (load/unload through the API; models in
            ``load_models`` at start) or ``poll``.
        load_models: Models to load at start in ``explicit`` mode.
        startup_timeout_s: How long ``start`` waits for readiness before killing the server.
        log_file: Where the server's output goes (default: a temporary file, removed by ``stop``).
        extra_args: More ``tritonserver`` arguments, appended as given.
    """

    def __init__(
        self,
        repo: Path | str,
        *,
        http_port: int = TRITON_HTTP_PORT,
        grpc_port: int = TRITON_GRPC_PORT,
        metrics_port: int = TRITON_METRICS_PORT,
        host: str = DEFAULT_HOST,
        metrics_host: str | None = None,
        model_control: str = "none",
        load_models: Sequence[str] = (),
        startup_timeout_s: float = 120.0,
        log_file: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if model_control not in MODEL_CONTROL_MODES:
            raise InvalidArgumentError(
                f"--model-control-mode must be one of {', '.join(MODEL_CONTROL_MODES)}, got {model_control!r}")
        if load_models and model_control != "explicit":
            raise InvalidArgumentError("--load-model needs --model-control-mode explicit")
        self.repo = Path(repo).resolve()
        self.http_port = int(http_port)
        self.grpc_port = int(grpc_port)
        self.metrics_port = int(metrics_port)
        self.host = host
        self.metrics_host = metrics_host or host
        self.model_control = model_control
        self.load_models = list(load_models)
        self.startup_timeout_s = float(startup_timeout_s)
        self.extra_args = list(extra_args)
        self._own_log = log_file is None
        self.log_path: Path | None = Path(log_file) if log_file is not None else None
        self._process: ChildProcess | None = None
        self.binary: Path | None = None

    # --- addresses ---------------------------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        """``host:port`` for ``tritonclient.grpc``."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        """``http://host:port/metrics``."""
        return f"http://{self.metrics_host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def command(self) -> list[str]:
        """The full command line (resolves the binary and, for the bundle, its backend folder)."""
        self.binary = self.binary or find_tritonserver()
        cmd = [
            str(self.binary),
            f"--model-repository={self.repo}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.metrics_host}", f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            f"--model-control-mode={self.model_control}",
            "--exit-on-error=true",
            "--exit-timeout-secs=10",
        ]
        cmd += [f"--load-model={name}" for name in self.load_models]
        if is_bundled(self.binary):
            cmd.append(f"--backend-directory={bundled_backend_dir()}")
        return cmd + self.extra_args

    def start(self) -> TritonServer:
        """Start the server and return once ``/v2/health/ready`` is 200.

        Raises:
            TritonStartError: the repository is missing or half-exported, the server exited (a model failed to
                load, a port is taken...) or it was not ready within ``startup_timeout_s``; the server is killed.
        """
        if self._process is not None and self._process.poll() is None:
            raise TritonStartError(f"tritonserver already runs (pid {self._process.pid})")
        if not self.repo.is_dir():
            raise TritonStartError(f"--repo: {self.repo} is not a directory; run 'edgediff export' first")
        unfinished = unfinished_export(self.repo)
        if unfinished:
            raise TritonStartError(unfinished)
        damaged = repository_problems(self.repo)  # artifacts as exported? (sizes, then sha256 streamed)
        if damaged:
            raise TritonStartError(f"model repository {self.repo}: {'; '.join(damaged[:3])}; it will not be served. "
                                   "Re-run 'edgediff export' for it (damaged cached artifacts are rebuilt)")
        self._check_ports_free()
        cmd = self.command()
        env = server_environment(is_bundled(self.binary))
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logger.info("starting %s", " ".join(cmd))
        with open(self.log_path, "wb") as log:  # its own process group; on Linux it dies with this process
            self._process = ChildProcess(cmd, name="tritonserver", stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + self.startup_timeout_s
            while time.monotonic() < deadline:
                code = self._process.poll()
                if code is not None:
                    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                    self._fail(f"tritonserver {how} before it was ready")
                if self.is_ready():
                    return self
                time.sleep(0.25)
            self._fail(f"tritonserver was not ready after {self.startup_timeout_s:.0f} s")
        except BaseException:  # Ctrl-C while waiting too: never leave a half-started server behind
            self.stop(timeout_s=5.0, keep_log=True)
            raise
        raise AssertionError("unreachable")

    def _check_ports_free(self) -> None:
        """Refuse ports something already listens on (else its readiness could be mistaken for ours).

        SO_REUSEADDR as tritonserver binds: connections of a server that just died linger in TIME_WAIT, which must
        not block its restart on the same ports; a live listener still makes the bind fail.
        """
        for flag, port in (("--http-port", self.http_port), ("--grpc-port", self.grpc_port),
                           ("--metrics-port", self.metrics_port)):
            with socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((self.host, port))
                except OSError as exc:
                    raise TritonStartError(f"{flag} {port} on {self.host} is not free ({exc.strerror}); pick "
                                           "another port or stop what listens there") from exc

    def _fail(self, headline: str) -> None:
        log = self.logs()
        self.stop(timeout_s=5.0, keep_log=True)
        details = "\n".join(error_lines(log)) or "(it wrote nothing)"
        raise TritonStartError(f"{headline} (repository {self.repo}, log {self.log_path}):\n{details}")

    def is_ready(self) -> bool:
        """True when ``/v2/health/ready`` answers 200 (every loaded model ready)."""
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1.0) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def logs(self) -> str:
        """The server's output so far."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for the server to exit; its exit code, or None while it still runs after ``timeout_s``."""
        if self._process is None:
            return None
        return self._process.wait(timeout_s)

    def stop(self, timeout_s: float = 30.0, *, keep_log: bool = False) -> None:
        """Stop the server and its Python stubs; idempotent.

        SIGTERM goes to the server, which unloads its models and stops its stubs (a SIGTERM to every stub at once
        makes that slower, not faster); then SIGKILL goes to the whole process group, after the server exited or
        after ``timeout_s``, so no stub outlives it.

        Args:
            timeout_s: Grace period before SIGKILL.
            keep_log: Keep a temporary log file (it is removed otherwise).
        """
        process, self._process = self._process, None
        if process is not None:
            process.stop(grace_s=timeout_s)  # SIGTERM, grace, then SIGKILL to the group (stubs)
        if self._own_log and not keep_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def __enter__(self) -> TritonServer:
        return self.start() if self.pid is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --- the Python backend's shared memory --------------------------------------------------------------------------
def python_shm_prefix(key: Path) -> str:
    """A prefix for the Python backend's ``/dev/shm`` regions, one per ``key`` (a stack's state folder), so what a
    killed Triton left behind can be found and removed (``remove_python_shm_regions``).
    """  # noqa: D205
    return f"edgediff_{hashlib.sha256(str(key.resolve()).encode()).hexdigest()[:10]}_"


def python_shm_flag(prefix: str) -> str:
    """The ``tritonserver`` flag that names the Python backend's regions with ``prefix``."""
    return f"--backend-config=python,shm-region-prefix-name={prefix}"


def remove_python_shm_regions(prefix: str) -> None:
    """Delete the ``/dev/shm/<prefix>*`` regions a killed Triton left behind."""
    for path in glob.glob(f"/dev/shm/{prefix}*"):
        with contextlib.suppress(OSError):  # removed meanwhile
            os.unlink(path)
